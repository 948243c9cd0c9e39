"""The playground page end to end: Debian's headless Chromium (driven by playwright, no downloaded browser)
against the shared `bentoml serve` session, through the real page and the real API, auth on.

Tiny models answer random text: the tests assert structure, counts, order and states, never content.
Every panel's screenshot is checked: right size, not blank, and the karaoke highlight really painted
where the lit line is (the lit line's box has the highlight colour, the other lines' boxes do not).
A console error or an uncaught exception in the page fails the test that caused it.
"""

from __future__ import annotations

import http.client
import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.audio_fixtures import encode, song, speech
from tests.served_session import API_KEY

pytestmark = pytest.mark.served

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"]
VIEWPORT = {"width": 1280, "height": 1000}
WAIT_MS = 240_000  # a tiny model call on 2 shared cores, behind whatever else the session is doing
LYRICS = ["Morning light on the water", "We sing the long way home", "And the night comes after"]
FAILED_LOAD = re.compile(r"Failed to load resource: the server responded with a status of (\d{3})")


# ---------------------------------------------------------------- no browser: the page is public, the API is not

def test_root_redirects_and_page_is_public_but_api_is_not(served):
    with served.client(key=None) as c:
        r = c.get("/", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/playground"
        r = c.get("/playground")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
        for testid in ("api-key", "align-panel", "asr-panel", "tts-panel", "caption-panel", "diagram-panel", "vl-panel"):
            assert f'data-testid="{testid}"' in r.text
        for asset, ctype in (("app.js", "text/javascript"), ("style.css", "text/css"), ("icon.svg", "image/svg+xml")):
            r = c.get(f"/playground/{asset}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(ctype) and r.content, asset
        cfg = c.get("/playground/config.json").json()
        assert cfg["auth"] is True
        assert set(cfg["services"]) == {"aligner", "asr", "tts", "captioner", "diagram", "vl"}
        assert all(s["model"] for s in cfg["services"].values())

        r = c.get("/playground/missing.js")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        # Every API route keeps its key.
        r = c.post("/api/v1/align", json={"lyrics": ["a"]})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        for path in ("/v1/audio/voices", "/v1/models", "/infer/stats"):
            assert c.get(path).status_code == 401, path
    # The public prefix is no way around auth: a dot-dot path as sent on the wire (httpx would normalise it).
    u = urlsplit(served.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        for path in ("/playground/../v1/audio/voices", "/playground/%2e%2e/v1/audio/voices"):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            assert resp.status in (401, 404), (path, resp.status)
    finally:
        conn.close()
    # The page is not an API: it stays out of the OpenAPI document (and the fuzzer).
    with served.client() as c:
        paths = c.get("/docs.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/playground") for p in paths)


# ---------------------------------------------------------------- the browser

MIC_SENTENCES = ["Good morning everyone.", "Let us begin the meeting now."]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not installed (make sysdeps installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    # The microphone: Chromium's fake capture device playing espeak-ng speech (two sentences between
    # silences, looped), permission granted without a prompt.
    gap = np.zeros(16000, np.float32)
    voice = np.concatenate([gap] + [np.concatenate([speech(t), gap]) for t in MIC_SENTENCES])
    mic = tmp_path_factory.mktemp("mic") / "mic.wav"
    mic.write_bytes(encode(voice, 16000, "wav"))
    args = CHROMIUM_ARGS + ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                            f"--use-file-for-fake-audio-capture={mic}"]
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=args)
        yield b
        b.close()


class ConsoleWatch:
    """Console errors and uncaught exceptions of a page. A failed request whose status a test expects
    (`expect_status(401)`) is the one allowed console error: Chromium logs every non-2xx fetch."""

    def __init__(self, page):
        self.errors: list[str] = []
        self.allowed: set[int] = set()
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _console(self, msg):
        if msg.type not in ("error", "assert"):
            return
        m = FAILED_LOAD.search(msg.text)
        if m and int(m.group(1)) in self.allowed:
            return
        self.errors.append(f"console.{msg.type}: {msg.text} @ {msg.location}")

    def expect_status(self, *codes: int) -> None:
        self.allowed.update(codes)


@pytest.fixture
def page(browser, served):
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)  # fresh storage per test
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    pg.console_watch = ConsoleWatch(pg)
    pg.goto(served.url + "/")  # through the redirect
    assert pg.url == served.url + "/playground"
    pg.wait_for_selector("body[data-ready=true]")
    yield pg
    errors = pg.console_watch.errors
    context.close()
    assert not errors, "errors in the page:\n" + "\n".join(errors)


def use_key(page, key: str, expect_ok: bool = True) -> None:
    status = "[data-testid=key-status]"
    page.wait_for_selector(f"{status}[data-checks]")  # the check at start-up is over
    checks = int(page.get_attribute(status, "data-checks"))
    page.fill("[data-testid=api-key]", key)
    page.click("[data-testid=api-key-save]")
    page.wait_for_function("([s, n]) => Number(document.querySelector(s).dataset.checks) > n", arg=[status, checks])
    assert page.get_attribute(status, "data-state") == ("good" if expect_ok else "bad"), page.inner_text(status)
    if expect_ok:
        assert page.inner_text(status) == "key accepted"


def submit(page, panel: str, expect: str = "done") -> str:
    """Click the panel's button and wait for that action to end (`data-runs` counts finished actions);
    returns the panel's error text. An unexpected state fails with the message the page shows."""
    sel = f"[data-testid={panel}-panel]"
    runs = int(page.get_attribute(sel, "data-runs") or 0)
    page.click(f"[data-testid={panel}-submit]")
    page.wait_for_function("([s, n]) => Number(document.querySelector(s).dataset.runs || 0) > n", arg=[sel, runs],
                           timeout=WAIT_MS)
    error = page.locator(f"[data-testid={panel}-error]")
    state = page.get_attribute(sel, "data-state")
    assert state == expect, error.inner_text() if error.is_visible() else state
    assert error.is_visible() is (expect == "error")
    return error.inner_text() if expect == "error" else ""


def rgb(css: str) -> np.ndarray:
    return np.array([int(v) for v in re.findall(r"\d+", css)[:3]], dtype=float)


def colour_share(img: np.ndarray, box: dict, colour: np.ndarray, inset: int = 3) -> float:
    """Share of the pixels inside `box` (viewport CSS px == screenshot px at scale 1) that are `colour`."""
    x0, y0 = int(box["x"]) + inset, int(box["y"]) + inset
    x1, y1 = int(box["x"] + box["width"]) - inset, int(box["y"] + box["height"]) - inset
    region = img[max(y0, 0):y1, max(x0, 0):x1]
    assert region.size, box
    return float(np.mean(np.all(np.abs(region - colour) <= 4, axis=-1)))


def shoot(page, path: Path, panel: str, ink: str | None = None) -> np.ndarray:
    """Screenshot with `panel` in view; checked for size and content, returned as RGB pixels. `ink`: an
    element of the panel whose box must show something drawn (text, a table), not an empty area."""
    page.locator(f"[data-testid={panel}-panel]").scroll_into_view_if_needed()
    page.screenshot(path=str(path))
    img = Image.open(path)
    assert img.size == (VIEWPORT["width"], VIEWPORT["height"])
    pixels = np.asarray(img.convert("RGB"), dtype=float)
    assert pixels.std() > 8, f"{path} looks blank (std {pixels.std():.1f})"
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 50, f"{path} has too few colours"
    box = page.locator(f"[data-testid={panel}-panel]").bounding_box()
    panel_bg = rgb(page.eval_on_selector(f"[data-testid={panel}-panel]", "e => getComputedStyle(e).backgroundColor"))
    assert colour_share(pixels, box, panel_bg) > 0.3, f"the {panel} panel's card is not painted"
    if ink is not None:
        b = page.locator(ink).bounding_box()
        region = pixels[max(int(b["y"]), 0):int(b["y"] + b["height"]), max(int(b["x"]), 0):int(b["x"] + b["width"])]
        assert region.size and region.std() > 10, f"{ink} shows nothing in {path}"
    return pixels


def write_song(path: Path, seconds: float = 9.0) -> Path:
    path.write_bytes(encode(song(seconds, sr=44100), 44100, "mp3"))
    return path


def test_key_is_asked_for_and_kept_for_the_session(page):
    status = "[data-testid=key-status]"
    page.wait_for_selector(f"{status}[data-checks]")
    assert page.get_attribute(status, "data-state") == "missing"
    for panel in ("align", "asr", "tts", "caption", "diagram", "vl"):  # every service this page drives is enabled
        assert page.locator(f"[data-testid={panel}-panel]").is_visible()
    use_key(page, API_KEY)
    page.reload()
    page.wait_for_selector(f"{status}[data-checks]")
    assert page.input_value("[data-testid=api-key]") == API_KEY
    assert page.get_attribute(status, "data-state") == "good"
    assert page.evaluate("() => localStorage.length") == 0  # the tab's session only, never on disk


def align_song(page, tmp_path) -> None:
    page.set_input_files("[data-testid=align-audio]", str(write_song(tmp_path / "song.mp3")))
    page.fill("[data-testid=align-lyrics]", "\n".join(LYRICS) + "\n")
    submit(page, "align")
    page.wait_for_function("() => document.querySelector('#align-player').readyState >= 1")


def line_times(lines) -> tuple[list[float], list[float]]:
    n = lines.count()
    return ([float(lines.nth(i).get_attribute("data-start")) for i in range(n)],
            [float(lines.nth(i).get_attribute("data-end")) for i in range(n)])


def test_align_panel_renders_the_aligned_lines(page, served, tmp_path):
    use_key(page, API_KEY)
    align_song(page, tmp_path)
    lines = page.locator("[data-testid=align-line]")
    assert lines.count() == len(LYRICS)
    assert [lines.nth(i).locator(".text").inner_text() for i in range(len(LYRICS))] == LYRICS  # our text, in order
    starts, ends = line_times(lines)
    assert starts == sorted(starts) and all(0 <= s <= e <= 9.5 for s, e in zip(starts, ends))
    shown = [lines.nth(i).locator(".time").inner_text() for i in range(len(LYRICS))]
    assert all(re.fullmatch(r"\[\d\d:\d\d\.\d\d\]", t) for t in shown) and shown == sorted(shown)
    assert page.get_attribute("[data-testid=align-download]", "href").startswith("blob:")
    assert page.get_attribute("[data-testid=align-download]", "download") == "song.lrc"
    # The .lrc the page writes is the server's own format=lrc for the same request (the tiny model is
    # deterministic).
    with page.expect_download() as dl:
        page.click("[data-testid=align-download]")
    with served.client() as c:
        lrc = c.post("/api/v1/align", files={"audio": ("song.mp3", (tmp_path / "song.mp3").read_bytes())},
                     data={"lyrics": json.dumps(LYRICS), "format": "lrc"})
    assert lrc.status_code == 200 and Path(dl.value.path()).read_text() == lrc.text
    # Every format, from the same answer (the server writes them: /api/v1/align/convert), each readable.
    import xml.etree.ElementTree as ET

    import pysubs2

    files = {}
    for fmt in ("lrc", "lrc_enhanced", "srt", "vtt", "ttml", "ass", "json"):
        with page.expect_download() as dl:
            page.click(f"[data-testid=align-download-{fmt}]")
        files[fmt] = Path(dl.value.path()).read_text()
    assert files["lrc"] == lrc.text
    answer = json.loads(files["json"])
    assert [s["text"] for s in answer["segments"]] == LYRICS
    spoken = [x for x in LYRICS if x.strip()]
    for fmt in ("srt", "vtt", "ass"):
        assert len(pysubs2.SSAFile.from_string(files[fmt]).events) == len(spoken), fmt
    assert len(pysubs2.SSAFile.from_string(files["ttml"], format_="ttml").events) == len(spoken)
    assert len(ET.fromstring(files["ttml"].encode()).findall(".//{http://www.w3.org/ns/ttml}p")) == len(spoken)
    # The review: the lines the aligner doubts are marked and listed (which ones: random on the tiny model).
    flagged = answer["review"]["lines_to_review"]
    assert [lines.nth(i).evaluate("e => e.classList.contains('review')") for i in range(len(LYRICS))] == \
        [i in flagged for i in range(len(LYRICS))]
    items = page.locator("[data-testid=align-review-item]")
    assert [int(items.nth(k).get_attribute("data-index")) for k in range(items.count())] == flagged
    assert re.search(rf"(\d+ of {len(LYRICS)} lines to check|all {len(LYRICS)} lines look right)",
                     page.inner_text("[data-testid=align-review]"))
    unsure = [w for s in answer["segments"] for w in s["words"] if w["confidence"] < 0.5 or not w["aligned"]]
    assert page.locator("[data-testid=align-lines] .word.unsure").count() == len(unsure)
    assert 8.5 < page.evaluate("() => document.querySelector('#align-player').duration") < 9.6
    # Clicking a line seeks the song to it.
    lines.nth(0).click()
    assert abs(page.evaluate("() => document.querySelector('#align-player').currentTime") - starts[0]) < 0.05
    shoot(page, tmp_path / "align.png", "align", ink="[data-testid=align-lines]")


def test_align_panel_verifies_separates_and_hears_the_lyrics_when_none_are_typed(page, served, tmp_path):
    """The options this gateway's settings allow (the served session runs the ASR and a vocal separator):
    verify + separate on typed lyrics, then no lyrics at all. The page shows what the API answers for the same
    request (the tiny models are deterministic; separation has no random shifts)."""
    use_key(page, API_KEY)
    assert page.is_visible("[data-testid=align-verify]") and page.is_visible("[data-testid=align-separate]")
    song_file = write_song(tmp_path / "song.mp3")
    page.set_input_files("[data-testid=align-audio]", str(song_file))
    page.fill("[data-testid=align-lyrics]", "\n".join(LYRICS) + "\n")
    page.check("[data-testid=align-verify]")
    page.check("[data-testid=align-separate]")
    submit(page, "align")
    lines = page.locator("[data-testid=align-line]")
    with served.client() as c:
        checked = c.post("/api/v1/align", files={"audio": ("song.mp3", song_file.read_bytes())},
                         data={"lyrics": json.dumps(LYRICS), "format": "json", "verify": "true", "separate": "true"})
        heard = c.post("/api/v1/align", files={"audio": ("song.mp3", song_file.read_bytes())},
                       data={"format": "json", "separate": "true"})
    assert checked.status_code == 200 and heard.status_code == 200, (checked.text, heard.text)
    checked, heard = checked.json(), heard.json()
    assert all(isinstance(seg["found"], bool) for seg in checked["segments"])
    assert [lines.nth(i).locator(".text").inner_text() for i in range(lines.count())] == LYRICS
    assert line_times(lines)[0] == [seg["start"] for seg in checked["segments"]]
    assert page.locator("[data-testid=align-extra-audio]").count() == len(checked["extra_audio"])
    # No lyrics typed: the ASR hears them (verify needs lyrics, so it is not sent).
    page.fill("[data-testid=align-lyrics]", "")
    submit(page, "align")
    assert heard["segments"], "the tiny ASR heard nothing in the song"
    assert [lines.nth(i).locator(".text").inner_text() for i in range(lines.count())] == \
        [seg["text"] for seg in heard["segments"]]
    assert line_times(lines)[0] == [seg["start"] for seg in heard["segments"]]


def test_align_karaoke_highlight_follows_the_audio(page, served, tmp_path):
    """The tiny aligner puts every line at the end of the song (a valid, degenerate answer), so the real
    answer is re-timed on its way to the page: lines 0.5-2.5 s, 3.5-5.5 s, 6.5-8.5 s, words spread evenly.
    The rest is real: the page's request (checked) is sent to the server, the texts and words are its answer.
    (The test re-sends it with httpx: an intercepted request's file part is not readable in Chromium.)"""
    song_path = write_song(tmp_path / "song.mp3")
    sent = {}

    def retime(route):
        req = route.request
        raw = req.post_data_buffer or b""
        assert req.method == "POST" and req.headers["x-api-key"] == API_KEY
        assert req.headers["content-type"].startswith("multipart/form-data")
        assert b'name="audio"; filename="song.mp3"' in raw and json.dumps(LYRICS, separators=(",", ":")).encode() in raw
        assert re.search(rb'name="format"\r\n\r\njson\r\n', raw)
        r = httpx.post(req.url, headers={"X-API-Key": API_KEY}, timeout=WAIT_MS / 1000,
                       files={"audio": ("song.mp3", song_path.read_bytes())},
                       data={"lyrics": json.dumps(LYRICS), "format": "json"})
        sent["status"] = r.status_code
        body = r.json()
        for i, seg in enumerate(body.get("segments", [])):
            seg["start"], seg["end"] = 0.5 + 3 * i, 2.5 + 3 * i
            for j, w in enumerate(seg["words"]):
                step = 2.0 / len(seg["words"])
                w["start"], w["end"] = seg["start"] + j * step, seg["start"] + (j + 1) * step
        route.fulfill(status=r.status_code, json=body)

    page.route("**/api/v1/align", retime)
    use_key(page, API_KEY)
    align_song(page, tmp_path)
    assert sent["status"] == 200
    lines = page.locator("[data-testid=align-line]")
    assert lines.count() == len(LYRICS)
    starts, _ = line_times(lines)
    active = "i => document.querySelector('#align-lines').dataset.active === String(i)"
    seek = "t => { document.querySelector('#align-player').currentTime = t }"

    # A line is lit from its start to the next line's start (held through the gap), the last one to its end.
    for t, lit_line in ((0.1, -1), (1.0, 0), (3.0, 0), (7.0, 2), (8.9, -1)):
        page.evaluate(seek, t)
        page.wait_for_function(active, arg=lit_line)
    page.evaluate(seek, 4.0)  # in line 2's span
    page.wait_for_function(active, arg=1)
    assert page.locator("[data-testid=align-line].active").count() == 1
    assert "active" in lines.nth(1).get_attribute("class")
    sung = lines.nth(1).locator(".word.sung").count()
    assert 0 < sung < lines.nth(1).locator(".word").count()  # word-level: the words before 4.0 s only

    pixels = shoot(page, tmp_path / "karaoke.png", "align")
    lit = rgb(lines.nth(1).evaluate("e => getComputedStyle(e).backgroundColor"))
    unlit = rgb(lines.nth(0).evaluate("e => getComputedStyle(e).backgroundColor"))
    assert np.abs(lit - unlit).sum() > 60, (lit, unlit)
    assert colour_share(pixels, lines.nth(1).bounding_box(), lit) > 0.5, "the lit line is not painted"
    for other in (0, 2):
        assert colour_share(pixels, lines.nth(other).bounding_box(), lit) < 0.05, f"line {other + 1} is painted"

    # Playback moves the highlight: play from just before line 3 into it.
    page.evaluate("() => { const a = document.querySelector('#align-player'); a.currentTime = 6.1; a.play() }")
    page.wait_for_function(active, arg=2, timeout=20_000)
    page.evaluate("() => document.querySelector('#align-player').pause()")
    # Clicking a line seeks to it and lights it.
    lines.nth(0).click()
    page.wait_for_function(active, arg=0)
    assert abs(page.evaluate("() => document.querySelector('#align-player').currentTime") - starts[0]) < 0.05
    pixels = shoot(page, tmp_path / "karaoke-clicked.png", "align")
    assert colour_share(pixels, lines.nth(0).bounding_box(), lit) > 0.5
    assert colour_share(pixels, lines.nth(1).bounding_box(), lit) < 0.05


def test_speech_panel_plays_what_it_synthesised(page, tmp_path):
    use_key(page, API_KEY)
    page.wait_for_function("() => document.querySelector('#tts-voice').value !== ''")
    assert page.locator("[data-testid=tts-voice] option").count() >= 2
    page.select_option("[data-testid=tts-voice]", index=1)
    page.fill("[data-testid=tts-input]", "Hello from the playground.")
    for fmt in ("mp3", "wav"):
        page.select_option("[data-testid=tts-format]", fmt)
        submit(page, "tts")
        page.wait_for_function("() => { const a = document.querySelector('#tts-audio');"
                               " return a.src.startsWith('blob:') && a.readyState >= 1 && a.duration > 0 }")
        duration = page.evaluate("() => document.querySelector('#tts-audio').duration")
        # QWEN_TTS_MAX_FRAMES=40 in the session: the tiny talker speaks 40 frames of 80 ms.
        assert 2.5 < duration < 4.5, (fmt, duration)
        assert page.get_attribute("[data-testid=tts-download]", "download") == f"speech.{fmt}"
        assert page.get_attribute("[data-testid=tts-download]", "href").startswith("blob:")
    shoot(page, tmp_path / "tts.png", "tts", ink="[data-testid=tts-audio]")


def test_caption_panel_streams_a_caption(page, tmp_path):
    use_key(page, API_KEY)
    clip = tmp_path / "clip.wav"
    clip.write_bytes(encode(song(4.0, sr=16000), 16000, "wav"))
    page.set_input_files("[data-testid=caption-audio]", str(clip))
    submit(page, "caption")
    assert page.inner_text("[data-testid=caption-text]").strip()
    meta = page.inner_text("[data-testid=caption-meta]")
    assert re.search(r"finish: (stop|length)", meta) and re.search(r"\d+ tokens", meta), meta
    shoot(page, tmp_path / "caption.png", "caption", ink="[data-testid=caption-text]")


def diagram_png(path: Path) -> Path:
    img = Image.new("RGB", (320, 200), "white")
    d = ImageDraw.Draw(img)
    for i, (x, label) in enumerate(((20, "Start"), (130, "Check"), (240, "End"))):
        d.rectangle([x, 80, x + 60, 120], outline="black", width=2)
        d.text((x + 8, 94), label, fill="black")
        if i < 2:
            d.line([x + 60, 100, x + 110, 100], fill="black", width=2)
    img.save(path)
    return path


def test_diagram_panel_shows_the_parsed_table(page, tmp_path):
    """/infer's answers are held to the table grammar: even the tiny model's random weights give a table,
    which the page shows parsed, with the configured columns."""
    use_key(page, API_KEY)
    page.set_input_files("[data-testid=diagram-file]", str(diagram_png(tmp_path / "diagram.png")))
    page.wait_for_selector("[data-testid=diagram-preview]:not([hidden])")
    submit(page, "diagram")
    table = page.locator("[data-testid=diagram-table]")
    assert table.count() == 1 and table.is_visible() and page.locator("[data-testid=diagram-raw]").count() == 0
    assert table.locator("th").all_inner_texts() == ["№", "Step", "Role"]
    assert all(len(r.locator("td").all()) == 3 for r in table.locator("tbody tr").all())
    assert "adapter" in page.inner_text("[data-testid=diagram-meta]")
    shoot(page, tmp_path / "diagram-shot.png", "diagram", ink="[data-testid=diagram-result]")


def test_diagram_table_rendering(page, tmp_path):
    """The table path, which tiny models never reach: /infer answered (in the browser) with a markdown
    table, rendered as an HTML table with its header and rows; cells are text, never markup."""
    body = ('{"description": "Steps:\\n\\n| Step | Action |\\n|---|---|\\n| 1 | Start |\\n'
            '| 2 | <b>Check</b> \\\\| retry |\\n| 3 |\\n", "metadata": {"adapter": "default"}}')
    page.route("**/infer", lambda route: route.fulfill(status=200, content_type="application/json", body=body))
    use_key(page, API_KEY)
    page.set_input_files("[data-testid=diagram-file]", str(diagram_png(tmp_path / "diagram.png")))
    submit(page, "diagram")
    table = page.locator("[data-testid=diagram-table]")
    assert table.locator("th").all_inner_texts() == ["Step", "Action"]
    rows = [r.locator("td").all_inner_texts() for r in table.locator("tbody tr").all()]
    assert rows == [["1", "Start"], ["2", "<b>Check</b> | retry"], ["3", ""]]
    assert table.locator("b").count() == 0
    shoot(page, tmp_path / "diagram-table.png", "diagram", ink="[data-testid=diagram-table]")


def test_errors_are_shown_from_the_envelope(page, served, tmp_path):
    # Client-side: nothing sent without a file.
    use_key(page, API_KEY)
    page.fill("[data-testid=align-lyrics]", "a line")
    shown = submit(page, "align", expect="error")
    assert shown.startswith("Not sent") and "choose a song" in shown

    # A text file as the song: the gateway's envelope message, in the panel.
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"these are my lyrics, not a song\n" * 40)
    with served.client() as c:
        expected = c.post("/api/v1/align", files={"audio": ("notes.txt", notes.read_bytes(), "text/plain")},
                          data={"lyrics": '["a line"]', "format": "json"})
    assert expected.status_code in (400, 415)
    err = expected.json()["error"]
    page.console_watch.expect_status(expected.status_code)
    page.set_input_files("[data-testid=align-audio]", str(notes))
    shown = submit(page, "align", expect="error")
    assert err["message"] in shown and f"HTTP {expected.status_code}" in shown and err["type"] in shown
    assert page.locator("[data-testid=align-line]").count() == 0
    assert page.is_enabled("[data-testid=align-submit]")  # usable again
    pixels = shoot(page, tmp_path / "align-error.png", "align")
    box = page.locator("[data-testid=align-error]").bounding_box()
    error_bg = rgb(page.eval_on_selector("[data-testid=align-error]", "e => getComputedStyle(e).backgroundColor"))
    assert colour_share(pixels, box, error_bg, inset=1) > 0.3, "the error box is not painted"

    # A wrong key: the 401 message, at the key and in a panel.
    with served.client(key="not-the-key") as c:
        unauthorized = c.get("/v1/models").json()["error"]["message"]
    page.console_watch.expect_status(401)
    use_key(page, "not-the-key", expect_ok=False)
    assert unauthorized in page.inner_text("[data-testid=key-status]")
    clip = tmp_path / "clip.wav"
    clip.write_bytes(encode(song(2.0, sr=16000), 16000, "wav"))
    page.set_input_files("[data-testid=caption-audio]", str(clip))
    shown = submit(page, "caption", expect="error")
    assert "HTTP 401" in shown and unauthorized in shown


def speech_wav(path: Path, *sentences: str) -> Path:
    gap = np.zeros(8000, np.float32)
    path.write_bytes(encode(np.concatenate([gap] + [np.concatenate([speech(t), gap]) for t in sentences]), 16000, "wav"))
    return path


def test_transcription_panel_streams_the_text_then_times_the_words(page, served, tmp_path):
    """A file: the text appears from the transcription stream, then each word with its time (verbose_json
    through the aligner). What the page shows is what the API answers for the same file (the tiny ASR is
    greedy: deterministic). The words light up as the file plays by the code the speech panel's test
    checks (showWords)."""
    use_key(page, API_KEY)
    wav = speech_wav(tmp_path / "talk.wav", "Hello there, this is the playground.")
    page.set_input_files("[data-testid=asr-audio]", str(wav))
    submit(page, "asr")
    with served.client() as c:
        whole = c.post("/v1/audio/transcriptions", files={"file": ("talk.wav", wav.read_bytes())},
                       data={"model": "whisper-1", "response_format": "verbose_json",
                             "timestamp_granularities[]": "word"}).json()
    shown = page.inner_text("[data-testid=asr-text]")
    assert shown.strip() and shown.strip() == whole["text"].strip()
    words = page.locator("[data-testid=asr-words] [data-testid=word]")
    assert words.count() == len(whole["words"]) > 0
    assert [float(words.nth(i).get_attribute("data-start")) for i in range(words.count())] == \
        [w["start"] for w in whole["words"]]
    assert re.search(r"\d+ words timed", page.inner_text("[data-testid=asr-meta]"))
    shoot(page, tmp_path / "asr.png", "asr", ink="[data-testid=asr-text]")


def test_transcription_panel_records_through_the_realtime_endpoint(page, tmp_path):
    """The microphone (Chromium's fake device playing speech) streams to /v1/realtime over a WebSocket that
    carries the key as a subprotocol; the server's VAD cuts turns and each turn's text appears."""
    use_key(page, API_KEY)
    panel = "[data-testid=asr-panel]"
    page.click("[data-testid=asr-record]")
    page.wait_for_selector(f"{panel}[data-recording=on]")
    assert page.inner_text("[data-testid=asr-record]") == "Stop"
    page.wait_for_function("s => Number(document.querySelector(s).dataset.turns || 0) >= 2", arg=panel,
                           timeout=WAIT_MS)
    page.click("[data-testid=asr-record]")
    page.wait_for_selector(f"{panel}[data-recording=off]", timeout=WAIT_MS)
    turns = page.locator("[data-testid=asr-turn]")
    assert turns.count() >= 2
    items = [turns.nth(i).get_attribute("data-item") for i in range(turns.count())]
    assert all(i.startswith("item_") for i in items) and len(set(items)) == len(items)
    done = page.locator("[data-testid=asr-turn]:not(.pending)")
    assert done.count() >= 2
    starts = [turns.nth(i).locator(".span").inner_text() for i in range(2)]
    assert all(re.fullmatch(r"\d+:\d\d\.\d", t) for t in starts)
    assert not page.locator("[data-testid=asr-error]").is_visible()
    shoot(page, tmp_path / "asr-mic.png", "asr", ink="[data-testid=asr-turns]")


def test_speech_panel_lights_each_word_as_it_is_spoken(page, tmp_path):
    """The page asks for timestamps; the tiny aligner's times are random (often all at the end), so the real
    answer is re-timed on its way to the page (words spread over the audio, as the karaoke test does);
    its audio and words are the server's."""
    sent = {}

    def retime(route):
        req = route.request
        body = json.loads(req.post_data)
        sent.update(body)
        r = httpx.post(req.url, headers={"X-API-Key": API_KEY}, json=body, timeout=WAIT_MS / 1000)
        answer = r.json()
        for i, w in enumerate(answer.get("words", [])):
            w["start"], w["end"] = round(0.2 + 0.4 * i, 3), round(0.5 + 0.4 * i, 3)
        route.fulfill(status=r.status_code, json=answer)

    page.route("**/v1/audio/speech", retime)
    use_key(page, API_KEY)
    page.wait_for_function("() => document.querySelector('#tts-voice').value !== ''")
    assert page.is_checked("[data-testid=tts-timed]")
    page.fill("[data-testid=tts-input]", "Hello from the playground. It speaks.")
    submit(page, "tts")
    assert sent["timestamps"] is True and sent["input"] == "Hello from the playground. It speaks."
    page.wait_for_function("() => document.querySelector('#tts-audio').readyState >= 1")
    words = page.locator("[data-testid=tts-words] [data-testid=word]")
    assert words.all_inner_texts() == ["Hello", "from", "the", "playground", "It", "speaks"]  # one per word
    starts = [float(words.nth(i).get_attribute("data-start")) for i in range(words.count())]
    duration = page.evaluate("() => document.querySelector('#tts-audio').duration")
    assert starts == sorted(starts) and 0 <= starts[0] and float(words.nth(5).get_attribute("data-end")) <= duration + 0.05
    k = 3
    page.evaluate("t => { document.querySelector('#tts-audio').currentTime = t }", starts[k] + 0.2)
    page.wait_for_function("k => document.querySelector('#tts-words').dataset.now === String(k)", arg=k)
    lit = page.locator("[data-testid=tts-words] .word.now")
    assert lit.count() == 1 and lit.inner_text() == "playground"
    assert page.locator("[data-testid=tts-words] .word.spoken").count() == k + 1  # the words said so far
    words.nth(1).click()  # a click plays from that word
    page.wait_for_function("() => { const a = document.querySelector('#tts-audio'); return !a.paused || a.ended }")
    page.evaluate("() => document.querySelector('#tts-audio').pause()")
    assert abs(page.evaluate("() => document.querySelector('#tts-audio').currentTime") - starts[1]) < 1.0
    pixels = shoot(page, tmp_path / "tts-words.png", "tts", ink="[data-testid=tts-words]")
    colour = rgb(lit.first.evaluate("e => getComputedStyle(e).backgroundColor"))
    assert colour_share(pixels, lit.first.bounding_box(), colour, inset=1) > 0.3, "the lit word is not painted"


def test_caption_panel_shows_a_timeline_for_long_audio(page, tmp_path):
    use_key(page, API_KEY)
    clip = tmp_path / "long.wav"
    clip.write_bytes(encode(song(45.0, sr=16000), 16000, "wav"))
    page.set_input_files("[data-testid=caption-audio]", str(clip))
    page.check("[data-testid=caption-windows]")
    submit(page, "caption")
    windows = page.locator("[data-testid=caption-window]")
    assert windows.count() == 2
    spans = [(float(windows.nth(i).get_attribute("data-start")), float(windows.nth(i).get_attribute("data-end")))
             for i in range(2)]
    assert spans[0][0] == 0 and spans[0][1] == spans[1][0] and 44 < spans[1][1] <= 45.5
    assert all(re.fullmatch(r"\d+:\d\d\.\d – \d+:\d\d\.\d", windows.nth(i).locator(".span").inner_text())
               for i in range(2))
    assert re.search(r"finish: (stop|length)", page.inner_text("[data-testid=caption-meta]"))
    shoot(page, tmp_path / "caption-timeline.png", "caption", ink="[data-testid=caption-timeline]")


def test_vision_panel_streams_an_answer_about_an_image(page, tmp_path):
    use_key(page, API_KEY)
    page.set_input_files("[data-testid=vl-file]", str(diagram_png(tmp_path / "picture.png")))
    page.wait_for_selector("[data-testid=vl-preview]:not([hidden])")
    page.fill("[data-testid=vl-question]", "What is in this picture?")
    submit(page, "vl")
    meta = page.inner_text("[data-testid=vl-meta]")
    assert re.search(r"finish: (stop|length)", meta) and re.search(r"\d+ tokens", meta), meta
    shoot(page, tmp_path / "vl.png", "vl")
