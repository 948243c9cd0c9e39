import numpy as np
import pytest

from services.aligner import lyrics
from services.runtime.codecs.chunking import Chunk, plan_chunks
from services.runtime.core.languages import ALIGNER


def whitespace_units(text, language):
    """The aligner's splitter for space languages: words, one unit per CJK char, punctuation dropped."""
    from qwen_asr.inference.qwen3_forced_aligner import Qwen3ForceAlignProcessor

    return Qwen3ForceAlignProcessor().encode_timestamp(text, language)[0]


@pytest.mark.parametrize("value, name", [("en", "English"), ("ZH", "Chinese"), ("yue", "Cantonese"),
                                         ("japanese", "Japanese"), ("pt-BR", "Portuguese"), (None, None), ("", None)])
def test_parse_language(value, name):
    assert ALIGNER.parse(value) == name


def test_parse_language_unknown_lists_supported():
    with pytest.raises(ValueError, match="supports: zh"):
        ALIGNER.parse("klingon")


@pytest.mark.parametrize("text, lang", [
    ("Hello darkness my old friend", "English"), ("我们一起唱歌", "Chinese"), ("こんにちは世界", "Japanese"),
    ("君の名は 世界", "Japanese"), ("사랑해요 당신", "Korean"), ("привет как дела", "Russian"),
    ("je ne sais pas pourquoi tu es la", "French"), ("ich liebe dich und du mich nicht", "German"),
    ("yo no sé por qué te quiero", "Spanish"),
])
def test_detect_language_by_script_then_function_words(text, lang):
    assert lyrics.detect_language(text) == lang


def test_rebuild_keeps_blank_and_punctuation_lines_in_order_and_repeats_get_their_own_times():
    lines = ["Hello world", "", "...", "Hello world", "你好"]
    units = lyrics.units_for_lines(lines, "English", whitespace_units)
    assert units == [["Hello", "world"], [], [], ["Hello", "world"], ["你", "好"]]
    times = [(1.0, 1.5), (1.5, 2.0), (5.0, 5.5), (5.5, 6.0), (7.0, 7.2), (7.2, 7.5)]
    segs = lyrics.rebuild_segments(lines, units, times, duration=10.0)
    assert [s["text"] for s in segs] == lines
    assert (segs[0]["start"], segs[0]["end"]) == (1.0, 2.0)
    assert (segs[3]["start"], segs[3]["end"]) == (5.0, 6.0)  # the second "Hello world" has its own time
    assert segs[1]["start"] == segs[2]["start"] == 2.0 and segs[1]["end"] == 5.0  # blank lines fill the gap
    assert [w["text"] for w in segs[4]["words"]] == ["你", "好"]


def test_rebuild_makes_times_monotonic_and_clamps_to_duration():
    lines = ["a b", "c"]
    segs = lyrics.rebuild_segments(lines, [["a", "b"], ["c"]], [(3.0, 4.0), (2.0, 2.5), (50.0, 60.0)], duration=8.0)
    starts = [w["start"] for s in segs for w in s["words"]]
    assert starts == sorted(starts)
    assert all(0 <= w["start"] <= w["end"] <= 8.0 for s in segs for w in s["words"])


def test_units_japanese_uses_the_aligner_splitter():
    units = lyrics.units_for_lines(["君の名は", ""], "Japanese", whitespace_units)
    assert len(units[0]) >= 2 and units[1] == []


def test_plan_chunks_cuts_long_audio_at_quiet_points_within_the_window():
    sr = 1000
    x = np.ones(sr * 700, dtype=np.float32) * 0.5
    x[sr * 250 : sr * 251] = 0.0  # a gap between phrases inside the search zone of the first window
    chunks = plan_chunks(x, sr, window_s=300)
    assert chunks[0].start == 0 and chunks[-1].end == len(x)
    assert all(a.end == b.start for a, b in zip(chunks, chunks[1:]))
    assert all(c.end - c.start <= 300 * sr for c in chunks)
    assert 250 * sr <= chunks[0].end <= 251 * sr


def test_plan_chunks_with_voice_activity_cuts_where_nobody_speaks_not_at_the_quietest_sample():
    """Loud music from 270 s on, a spoken pause (silence) at 250 s: energy alone cuts in the pause, inside the
    speech; voice activity moves the cut into the music, whatever its loudness."""
    sr = 1000
    x = np.ones(sr * 400, dtype=np.float32) * 0.2
    x[sr * 250 : sr * 251] = 0.0  # a pause between two spoken words
    x[sr * 270 :] = 0.9  # music: loud, not speech
    prob_s = 0.032
    probs = np.zeros(int(400 / prob_s), dtype=np.float32)
    probs[: int(270 / prob_s)] = 0.95  # speech until 270 s, pause included (its frames are smoothed over)
    assert 250 * sr <= plan_chunks(x, sr, window_s=300)[0].end <= 251 * sr  # the baseline this guards against
    chunks = plan_chunks(x, sr, window_s=300, speech=(probs, prob_s))
    assert 270.1 * sr <= chunks[0].end <= 300 * sr, chunks
    assert chunks[-1].end == len(x) and all(a.end == b.start for a, b in zip(chunks, chunks[1:]))
    # Among frames without speech, the quietest one: a dip in the music at 290 s.
    x[sr * 290 : sr * 291] = 0.3
    assert 290 * sr <= plan_chunks(x, sr, window_s=300, speech=(probs, prob_s))[0].end <= 291 * sr


def test_plan_chunks_short_audio_is_one_chunk():
    x = np.zeros(16000 * 10, dtype=np.float32)
    assert plan_chunks(x, 16000, 300) == [Chunk(0, len(x))]


def test_assign_lines_follows_weights_and_never_splits_a_line():
    counts = [4] * 10
    ranges = lyrics.assign_lines(counts, [1.0, 1.0])
    assert ranges == [(0, 5), (5, 10)]
    ranges = lyrics.assign_lines(counts, [3.0, 1.0])
    assert ranges[0][1] in (7, 8) and ranges[-1][1] == 10
    assert lyrics.assign_lines(counts, [1.0]) == [(0, 10)]


# -- the aligner's input limits (services/aligner/contract.py), the same for the gateway and the service ---
def test_lyric_limits():
    from services.aligner.contract import check_lyrics
    from services.runtime.core.errors import PayloadTooLarge, Unprocessable
    from services.runtime.core.settings import AlignerSettings

    cfg = AlignerSettings(max_lines=3, max_lyrics_chars=12)
    check_lyrics(["one", "", "two three"], cfg)
    for lines, error, code in ((["", " "], Unprocessable, "empty_lyrics"),
                               (["a"] * 4, PayloadTooLarge, "lyrics_too_long"),
                               (["one two", "three four"], PayloadTooLarge, "lyrics_too_long")):
        with pytest.raises(error) as e:
            check_lyrics(lines, cfg)
        assert (e.value.param, e.value.code) == ("lyrics", code)


def test_audio_limit_allows_the_decoders_slack_and_no_more():
    from services.aligner.contract import check_audio
    from services.runtime.codecs.audio import DURATION_SLACK_SECONDS
    from services.runtime.core.errors import PayloadTooLarge
    from services.runtime.core.settings import AlignerSettings

    cfg = AlignerSettings(max_audio_seconds=10)
    check_audio(np.zeros(int((10 + DURATION_SLACK_SECONDS) * 16000), np.float32), cfg)
    with pytest.raises(PayloadTooLarge) as e:
        check_audio(np.zeros(int((10 + DURATION_SLACK_SECONDS) * 16000) + 1, np.float32), cfg)
    assert (e.value.status, e.value.param, e.value.code) == (413, "audio", "audio_too_long")


def test_a_chorus_sung_three_times_in_a_ten_minute_song_is_placed_on_each_occurrence():
    """A 10-minute song (windows of 120 s) with verses and the same chorus line sung at 100 s, 330 s and
    560 s: the windows are cut between sung lines, each occurrence of the chorus goes to the window where
    it is sung, and the rebuilt segments keep each occurrence's own time (not the first one's three times)."""
    sr = 16000
    chorus = "Shine on me tonight"
    sung = [(20.0 + 40 * k, f"Verse line number {k} here") for k in range(15)]  # 4-word lines every 40 s
    sung = [(t, text) for t, text in sung if all(abs(t - c) > 8 for c in (100.0, 330.0, 560.0))]
    sung += [(c, chorus) for c in (100.0, 330.0, 560.0)]
    sung.sort()
    audio = np.zeros(600 * sr, np.float32)
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(4 * sr) / sr).astype(np.float32)
    for t, _ in sung:
        audio[int(t * sr):int(t * sr) + len(tone)] += tone
    lines = [text for _, text in sung]
    units = [line.split() for line in lines]
    chunks = plan_chunks(audio, sr, 120.0)
    assert len(chunks) >= 5
    ranges = lyrics.assign_lines([len(u) for u in units], lyrics.voiced_weights(audio, chunks, sr))
    where = {}
    for chunk, (a, b) in zip(chunks, ranges):
        for i in range(a, b):
            where[i] = chunk
    for i, (t, _) in enumerate(sung):  # every line in the window where it is sung
        assert where[i].start <= t * sr < where[i].end, (i, t, where[i])
    # Each chorus occurrence keeps its own times through the rebuild (the aligner's times given here).
    times = [(t + 0.9 * k, t + 0.9 * k + 0.8) for (t, _), u in zip(sung, units) for k in range(len(u))]
    segs = lyrics.rebuild_segments(lines, units, times, duration=600.0)
    assert [s["start"] for s in segs if s["text"] == chorus] == [100.0, 330.0, 560.0]


def test_heard_text_is_cut_into_lines_at_pauses_and_every_few_words():
    words = [{"text": w, "start": t, "end": t + 0.3} for w, t in
             [("one", 0.0), ("two", 0.4), ("three", 0.8), ("four", 2.0), ("five", 2.4), ("six", 2.8)]]
    segs = [{"text": "One, two three... four five six!", "start": 0.0, "end": 3.1, "words": words},
            {"text": "la", "start": 3.1, "end": 3.2, "words": []}]
    lines = lyrics.split_lines(segs, max_units=10, min_gap=0.6)
    assert [line["text"] for line in lines] == ["One, two three...", "four five six!"]  # the pause at 1.1-2.0 s
    assert [(line["start"], round(line["end"], 3)) for line in lines] == [(0.0, 1.1), (2.0, 3.1)]
    assert [len(line["words"]) for line in lines] == [3, 3]
    short = lyrics.split_lines(segs, max_units=2, min_gap=5.0)
    assert [len(line["words"]) for line in short] == [2, 2, 2]
    assert "".join(line["text"] for line in short).replace(" ", "") == "One,twothree...fourfivesix!"
