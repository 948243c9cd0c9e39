"""POST /api/v1/align through the real `bentoml serve` (gateway + aligner processes) on the tiny aligner.

The tiny model's times are random: assertions are on formats, counts, ordering, bounds and statuses."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.audio_fixtures import encode, song
from tests.served_session import API_KEY

pytestmark = pytest.mark.served

LYRICS = ["Hello darkness my old friend", "", "I've come to talk with you again", "...",
          "Hello darkness my old friend", "你好 世界"]
LRC_LINE = re.compile(r"^\[(\d{2,}):(\d{2})\.(\d{2})\]( .*)?$")


@pytest.fixture(scope="module")
def client(served):
    with served.client() as c:
        yield c


def post_upload(client, audio: bytes, lyrics=LYRICS, filename="song.wav", **fields):
    data = {**({"lyrics": json.dumps(lyrics)} if lyrics is not None else {}), **fields}
    return client.post("/api/v1/align", files={"audio": (filename, audio, "application/octet-stream")}, data=data)


def lrc_seconds(m):
    return int(m.group(1)) * 60 + int(m.group(2)) + int(m.group(3)) / 100


def check_json(body, n_lines, duration):
    assert set(body) == {"segments", "language", "duration", "review", "extra_audio"}
    assert abs(body["duration"] - duration) < 0.1
    segs = body["segments"]
    assert [s["text"] for s in segs] == LYRICS[:n_lines] if n_lines == len(LYRICS) else len(segs) == n_lines
    starts = [s["start"] for s in segs]
    assert starts == sorted(starts)
    for s in segs:
        assert 0 <= s["start"] <= s["end"] <= body["duration"] + 1e-6
        for w in s["words"]:
            assert s["start"] <= w["start"] <= w["end"] <= s["end"] + 1e-6
    return segs


def test_health_went_from_loading_to_ready(served):
    states = [h["services"]["aligner"]["status"] for h in served.health_seen]
    assert states[-1] == "ready" and served.health_seen[-1]["code"] == 200
    assert "loading" in states, f"never saw the loading state: {states}"
    loading = next(h for h in served.health_seen if h["services"]["aligner"]["status"] == "loading")
    assert loading["code"] == 503 and loading["status"] == "starting"
    assert loading["services"]["aligner"]["phase"] in ("starting", "fetching weights", "loading", "warming up")
    ready = served.health_seen[-1]["services"]["aligner"]
    assert ready["device"] == "cpu" and ready["dtype"] == "float32" and ready["concurrency_limit"] == 2
    assert ready["error"] is None and ready["model"] == "tiny:aligner" and ready["phase"] is None
    from services.runtime.serving.modelservice import ModelService  # the keys the gateway fills in when unreachable

    for status in served.health_seen[-1]["services"].values():
        assert set(ModelService.STATUS_KEYS) <= set(status), status  # a service may add its own (backend)


def test_probes_are_open_and_ready(served):
    with served.client(key=None) as anon:
        assert anon.get("/livez").status_code == 200
        assert anon.get("/readyz").status_code == 200
        assert anon.get("/health").json()["status"] == "healthy"
        assert anon.get("/metrics").status_code == 200


def test_lrc_upload_with_metadata_header(client, wav):
    r = post_upload(client, wav, format="lrc", metadata=json.dumps({"title": "Song", "artist": "Me"}))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers["x-request-id"]
    lines = r.text.splitlines()
    assert lines[:3] == ["[ti:Song]", "[ar:Me]", "[length:00:12]"]
    body = lines[3:]
    assert len(body) == len(LYRICS)
    matches = [LRC_LINE.match(line) for line in body]
    assert all(matches), body
    times = [lrc_seconds(m) for m in matches]
    assert times == sorted(times) and times[-1] <= 12.0
    assert [(m.group(4) or "").strip() for m in matches] == [" ".join(x.split()) for x in LYRICS]


def test_json_segments_and_words(client, wav):
    r = post_upload(client, wav, format="json", language="en")
    assert r.status_code == 200, r.text
    segs = check_json(r.json(), len(LYRICS), 12.0)
    assert r.json()["language"] == "en"
    assert [len(s["words"]) for s in segs] == [5, 0, 7, 0, 5, 4]  # units: words, one per CJK char
    # Confidence and review flags on every line and word (values: random on the tiny model; the decisions
    # are unit-tested on constructed scores, tests/unit/test_align_review.py).
    for seg in segs:
        assert isinstance(seg["needs_review"], bool) and isinstance(seg["review"], list)
        assert seg["needs_review"] is bool(seg["review"])
        assert set(seg["review"]) <= {"low_confidence", "interpolated", "too_fast", "too_slow"}
        if seg["words"]:  # both branches run: the lyrics have lines with words and blank ones (above)
            assert 0 <= seg["confidence"] <= 1
            assert all(0 <= w["confidence"] <= 1 and isinstance(w["aligned"], bool) for w in seg["words"])
        else:
            assert seg["confidence"] is None and not seg["needs_review"]
    review = r.json()["review"]
    assert review["lines"] == len(LYRICS)
    assert review["lines_to_review"] == [i for i, seg in enumerate(segs) if seg["needs_review"]]
    assert review["needs_review"] == len(review["lines_to_review"])


def test_srt_vtt_and_enhanced_lrc(client, wav):
    spoken = [line for line in LYRICS if any(ch.isalnum() for ch in line)]
    r = post_upload(client, wav, format="srt")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-subrip")
    blocks = r.text.strip().split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [str(i) for i in range(1, len(blocks) + 1)]
    assert len(blocks) == len([x for x in LYRICS if x.strip()])
    assert all(re.match(r"^\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}$", b.splitlines()[1]) for b in blocks)

    r = post_upload(client, wav, format="vtt")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/vtt")
    assert r.text.startswith("WEBVTT\n\n")
    assert len(re.findall(r"^\d\d:\d\d:\d\d\.\d{3} --> ", r.text, re.M)) == len([x for x in LYRICS if x.strip()])

    r = post_upload(client, wav, format="lrc_enhanced")
    assert r.status_code == 200
    body = [line for line in r.text.splitlines() if not line.startswith(("[length", "[ti", "[ar"))]
    assert len(body) == len(LYRICS)
    word_lines = [line for line in body if "<" in line]
    assert len(word_lines) == len(spoken)  # "..." has no units: a plain timed line, no word tags
    for line in word_lines:
        tags = re.findall(r"<(\d{2,}:\d{2}\.\d{2})>", line)
        assert len(tags) >= 2 and tags == sorted(tags)


def test_ttml_and_ass_read_back_in_an_independent_library(client, wav):
    """The served song in the formats players and editors read: pysubs2 parses both, one cue per sung line
    in order; ASS's karaoke syllables fill each line; TTML's word spans are the JSON answer's words."""
    import xml.etree.ElementTree as ET

    import pysubs2

    shown = [x for x in LYRICS if x.strip()]
    segments = post_upload(client, wav, format="json").json()["segments"]
    r = post_upload(client, wav, format="ass")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/x-ssa")
    ass = pysubs2.SSAFile.from_string(r.text)
    assert len(ass.events) == len(shown) and [e.start for e in ass.events] == sorted(e.start for e in ass.events)
    for e in ass.events:
        ks = [int(k) for k in re.findall(r"\\k(\d+)", e.text)]
        assert sum(ks) * 10 == e.end - e.start or not ks  # a line without units has no syllables
    r = post_upload(client, wav, format="ttml")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/ttml+xml")
    ttml = pysubs2.SSAFile.from_string(r.text, format_="ttml")
    assert len(ttml.events) == len(shown)
    ns = {"tt": "http://www.w3.org/ns/ttml"}
    paragraphs = ET.fromstring(r.text.encode()).findall(".//tt:p", ns)
    sung = [s["words"] for s in segments if s["words"]]  # lines with units ("..." has none: no spans)
    assert [[s.text for s in p.findall("tt:span", ns)] for p in paragraphs if p.findall("tt:span", ns)] == \
        [[w["text"] for w in ws] for ws in sung]


@pytest.mark.parametrize("fmt", ["mp3", "flac", "m4a", "ogg"])
def test_any_common_audio_format_is_decoded_by_content(client, fmt):
    data = encode(song(6.0, sr=44100), 44100, fmt)
    r = post_upload(client, data, filename="no-extension", format="json")
    assert r.status_code == 200, r.text
    assert abs(r.json()["duration"] - 6.0) < 0.15


def test_audio_url_from_a_web_server(client, served):
    r = client.post("/api/v1/align", json={"audio_url": f"{served.media_url}/short.mp3", "lyrics": LYRICS,
                                            "format": "json"})
    assert r.status_code == 200, r.text
    check_json(r.json(), len(LYRICS), 12.0)


def test_lyrics_as_one_string_with_newlines(client, served):
    r = client.post("/api/v1/align", json={"audio_url": f"{served.media_url}/short.wav",
                                            "lyrics": "line one\n\nline two", "format": "json"})
    assert r.status_code == 200, r.text
    assert [s["text"] for s in r.json()["segments"]] == ["line one", "", "line two"]


def test_s3_url_through_an_s3_protocol_server(client):
    r = client.post("/api/v1/align", json={"audio_url": "s3://songs/library/short.mp3", "lyrics": LYRICS,
                                            "format": "json"})
    assert r.status_code == 200, r.text
    check_json(r.json(), len(LYRICS), 12.0)


def test_s3_missing_object_is_a_clear_400(client):
    r = client.post("/api/v1/align", json={"audio_url": "s3://songs/nope.mp3", "lyrics": LYRICS})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "object_not_found" and r.json()["error"]["param"] == "audio_url"


@pytest.mark.parametrize("url, status, code", [
    ("http://169.254.169.254/latest/meta-data/", 400, "url_refused"),
    ("http://10.0.0.1/song.mp3", 400, "url_refused"),
    ("file:///etc/passwd", 400, "url_refused"),
    ("/to-metadata", 400, "url_refused"),  # a redirect from an allowed host to the metadata address
    ("/missing.mp3", 400, "fetch_failed"),
    ("http://127.0.0.1:9/unreachable.mp3", 502, "fetch_failed"),
])
def test_url_refusals_and_failures(client, served, url, status, code):
    if url.startswith("/"):
        url = served.media_url + url
    r = client.post("/api/v1/align", json={"audio_url": url, "lyrics": LYRICS})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["param"] == "audio_url" and err["message"]


def test_auth_is_required_and_both_header_forms_work(served, wav):
    with served.client(key=None) as anon:
        r = post_upload(anon, wav)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = anon.post("/api/v1/align", headers={"Authorization": "Bearer wrong"}, json={"lyrics": ["a"]})
        assert r.status_code == 401
        r = anon.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
        assert r.status_code == 200 and r.json()["data"][0]["service"] == "aligner"


@pytest.mark.parametrize("case, status, code", [
    ("text-as-wav", 415, "unsupported_media"),
    ("empty-file", 400, "empty_audio"),
    ("empty-lyrics", 422, "empty_lyrics"),
    ("punctuation-lyrics", 422, "empty_lyrics"),
    ("bad-format", 400, "invalid_value"),
    ("bad-language", 400, "unsupported_language"),
    ("no-audio", 400, "missing_audio"),
    ("bad-json", 400, "invalid_json"),
    ("unknown-field", 400, "invalid_value"),
])
def test_bad_input_gets_a_clear_4xx_envelope(client, wav, case, status, code):
    if case == "text-as-wav":
        r = post_upload(client, b"this is not audio\n" * 20, filename="song.wav")
    elif case == "empty-file":
        r = post_upload(client, b"")
    elif case == "empty-lyrics":
        r = post_upload(client, wav, lyrics=["", "  "])
    elif case == "punctuation-lyrics":
        r = post_upload(client, wav, lyrics=["...", "!?"])
    elif case == "bad-format":
        r = post_upload(client, wav, format="txt")
    elif case == "bad-language":
        r = post_upload(client, wav, language="klingon")
    elif case == "no-audio":
        r = client.post("/api/v1/align", json={"lyrics": ["a"]})
    elif case == "bad-json":
        r = client.post("/api/v1/align", content=b"{not json", headers={"content-type": "application/json"})
    else:
        r = client.post("/api/v1/align", json={"lyrics": ["a"], "audio_url": "http://x", "colour": "red"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code and err["message"]


def test_audio_over_the_length_limit_is_413(client):
    data = encode(song(700.0, sr=8000, phrase=5.0, gap=1.0), 8000, "flac")  # limit set to 660 s
    r = post_upload(client, data)
    assert r.status_code == 413 and r.json()["error"]["code"] == "audio_too_long"


def test_ten_minute_song_is_split_and_offset(client):
    data = encode(song(600.0, sr=16000, phrase=4.0, gap=1.0), 16000, "flac")
    lyrics = [f"line number {i} of the long song" for i in range(120)]
    r = post_upload(client, data, lyrics=lyrics, format="json", language="en")
    assert r.status_code == 200, r.text
    body = r.json()
    assert abs(body["duration"] - 600.0) < 0.5 and len(body["segments"]) == 120
    starts = [s["start"] for s in body["segments"]]
    assert starts == sorted(starts) and max(s["end"] for s in body["segments"]) <= 600.0
    # Lines of the later windows carry the window's global offset (a window starts at >= 180 s).
    assert starts[-1] >= 180.0


def test_task_submit_status_result_survives_the_client(served, wav):
    with served.client() as c:
        r = c.post("/api/v1/align/tasks", files={"audio": ("s.wav", wav)},
                   data={"lyrics": json.dumps(LYRICS), "format": "srt"})
        assert r.status_code == 202, r.text
        task = r.json()
        assert r.headers["location"] == task["status_url"]
    # The submitting connection is closed; the task goes on. Poll from a new client.
    with served.client() as c:
        deadline = time.monotonic() + 120
        while (st := c.get(task["status_url"]).json())["status"] in ("pending", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert st["status"] == "succeeded", st
        r = c.get(task["result_url"])
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-subrip")
        assert r.text.startswith("1\n")
        assert c.get("/api/v1/align/tasks/does-not-exist").status_code == 404


def test_metrics_parse_and_cover_routes_models_and_batches(client, wav):
    assert post_upload(client, wav).status_code == 200
    text = httpx.get(str(client.base_url) + "/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    reqs = [s for s in fams["qwen_requests"].samples if s.name == "qwen_requests_total"]
    assert any(s.labels["route"] == "/api/v1/align" and s.labels["status"] == "200" and s.value >= 1 for s in reqs)
    assert any(s.labels["status"] == "401" for s in reqs)
    load = [s for s in fams["qwen_model_load_seconds"].samples if s.labels["service"] == "aligner"]
    assert load and load[0].value > 0
    inf = {s.name: s.value for s in fams["qwen_inference_seconds"].samples if s.name.endswith(("_count", "_sum"))}
    assert inf["qwen_inference_seconds_count"] >= 1
    batches = {s.name: s.value for s in fams["qwen_batch_size"].samples if s.name.endswith(("_count", "_sum"))}
    assert batches["qwen_batch_size_sum"] >= batches["qwen_batch_size_count"] >= 1
    assert "qwen_queue_depth" in fams and "qwen_requests_in_flight" in fams
    lat = [s for s in fams["qwen_request_duration_seconds"].samples if s.name.endswith("_count")]
    assert any(s.labels["route"] == "/api/v1/align" for s in lat)


def test_worker_keeps_serving_after_bad_input(client, wav):
    assert post_upload(client, b"\x00garbage").status_code == 415
    assert post_upload(client, wav, format="lrc").status_code == 200


def test_docs_are_public_and_list_the_routes(served):
    with served.client(key=None) as anon:
        assert anon.get("/docs").status_code == 200
        spec = anon.get("/docs.json").json()
        assert {"/api/v1/align", "/api/v1/align/tasks", "/health"} <= set(spec["paths"])


def test_unknown_route_and_method_use_the_envelope(client):
    r = client.get("/no/such/route")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.delete("/api/v1/align")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_concurrent_alignments_are_batched(served, wav):
    """Four requests at once (QWEN_ALIGNER_MAX_BATCH_SIZE=4 in the served session): their windows go
    through fewer engine calls than there are windows."""
    import concurrent.futures

    before = served.batches("aligner")

    def one(i):
        with served.client(timeout=300) as c:
            return post_upload(c, wav, lyrics=[f"line {i} one", f"line {i} two"])

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = [r.status_code for r in pool.map(one, range(4))]
    after = served.batches("aligner")
    items, calls = after[0] - before[0], after[1] - before[1]
    assert codes == [200] * 4
    assert items >= 4 and calls < items, (items, calls)


def synthetic_song() -> tuple[bytes, list[str], float]:
    """espeak-ng lines over a tone and noise at known offsets: a line, a second, the first again (a
    repeated chorus), an extra spoken line the lyrics lack; the lyrics also hold a line never sung."""
    import numpy as np

    from tests.audio_fixtures import SPEECH_SR, speech, tone_and_noise

    sung = [(1.0, "The river runs to the sea"), (6.0, "And carries all my dreams"),
            (11.0, "The river runs to the sea"), (16.0, "Somebody shouts an extra line here")]
    seconds = 22.0
    audio = 0.3 * tone_and_noise(seconds)
    for t, text in sung:
        voice = speech(text)
        a = int(t * SPEECH_SR)
        audio[a:a + len(voice)] += voice[: len(audio) - a]
    audio = np.clip(audio, -1, 1).astype(np.float32)
    lyrics = ["The river runs to the sea", "And carries all my dreams", "This line is never sung",
              "The river runs to the sea"]
    return encode(audio, SPEECH_SR, "wav"), lyrics, seconds


def test_a_synthetic_song_with_verify_in_every_format(client):
    """Structure, flags and ordering through the gateway (the tiny models' times and words are random:
    which lines are flagged is proven in tests/unit/test_align_verify.py and test_align_review.py)."""
    import xml.etree.ElementTree as ET

    import pysubs2

    data, lyrics, seconds = synthetic_song()
    r = post_upload(client, data, lyrics=lyrics, format="json", verify="true", language="en")
    assert r.status_code == 200, r.text
    body = r.json()
    segs = body["segments"]
    assert [s["text"] for s in segs] == lyrics and abs(body["duration"] - seconds) < 0.1
    assert [s["start"] for s in segs] == sorted(s["start"] for s in segs)
    for s in segs:
        assert isinstance(s["found"], bool) and 0 <= s["confidence"] <= 1
        assert s["needs_review"] is bool(s["review"]) and ("not_found" in s["review"]) is (not s["found"])
    assert body["review"]["lines_to_review"] == [i for i, s in enumerate(segs) if s["needs_review"]]
    extra = body["extra_audio"]
    assert isinstance(extra, list) and all(0 <= e["start"] <= e["end"] <= seconds + 0.1 and e["text"] for e in extra)
    assert [e["start"] for e in extra] == sorted(e["start"] for e in extra)
    for fmt in ("lrc", "lrc_enhanced", "srt", "vtt", "ass", "ttml"):
        r = post_upload(client, data, lyrics=lyrics, format=fmt, language="en")
        assert r.status_code == 200, (fmt, r.text)
        if fmt == "ttml":
            assert len(ET.fromstring(r.text.encode()).findall(".//{http://www.w3.org/ns/ttml}p")) == len(lyrics)
            assert len(pysubs2.SSAFile.from_string(r.text, format_="ttml").events) == len(lyrics)
        elif fmt.startswith("lrc"):
            timed = [line for line in r.text.splitlines() if LRC_LINE.match(line.split(" <")[0])]
            assert len(timed) == len(lyrics)
        else:
            assert len(pysubs2.SSAFile.from_string(r.text).events) == len(lyrics), fmt


def test_no_lyrics_gives_timed_lines_heard_by_the_asr(client):
    data, _, seconds = synthetic_song()
    r = post_upload(client, data, lyrics=None, format="json", language="en")
    assert r.status_code == 200, r.text
    segs = r.json()["segments"]
    assert segs and all(s["text"].strip() and s["words"] for s in segs)  # every heard line has its words
    assert [s["start"] for s in segs] == sorted(s["start"] for s in segs)
    assert all(0 <= s["start"] <= s["end"] <= seconds + 0.1 and len(s["words"]) <= 10 for s in segs)
    assert r.json()["review"]["lines"] == len(segs)
    lrc = post_upload(client, data, lyrics=None, format="lrc", language="en")
    assert lrc.status_code == 200
    assert len([line for line in lrc.text.splitlines() if LRC_LINE.match(line)]) == len(segs)


def test_separate_with_verify_hears_the_vocals_in_every_step(served, client):
    """separate + verify: the song separated once (the tiny Demucs), then aligned and heard by the ASR;
    one separation per request in the separator's own batches."""
    data, lyrics, seconds = synthetic_song()
    before = served.batches("separator")
    r = post_upload(client, data, lyrics=lyrics, format="json", separate="true", verify="true")
    assert r.status_code == 200, r.text
    segs = r.json()["segments"]
    assert [s["text"] for s in segs] == lyrics and abs(r.json()["duration"] - seconds) < 0.1
    assert all(isinstance(s["found"], bool) and 0 <= s["confidence"] <= 1 for s in segs)
    after = served.batches("separator")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


def test_an_alignment_is_not_held_behind_a_song_being_separated(served, client, wav):
    """A 2-minute song being separated (seconds of CPU on the tiny model) holds the separator's slot, not the
    aligner's: a short alignment sent meanwhile answers while the separation is still running."""
    import concurrent.futures

    long_song = encode(song(120.0, sr=16000), 16000, "wav")

    def separated():
        with served.client(timeout=300) as c:
            return post_upload(c, long_song, lyrics=["la la la"] * 8, format="json", separate="true")

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(separated)
        deadline = time.monotonic() + 60
        while served.metric("qwen_inference_active", "separator").get("qwen_inference_active", 0) < 1:
            assert time.monotonic() < deadline and not pending.done(), "the separation never started"
            time.sleep(0.05)
        short = post_upload(client, wav)
        still_separating = not pending.done()
        assert short.status_code == 200 and still_separating
        assert pending.result().status_code == 200
