"""Turns of a realtime session (services.asr.turns) on constructed speech probabilities: where OpenAI's
server_vad semantics put speech_started/stopped and the committed audio, the longest turn, the padding kept
between turns (memory bounded), and manual commits."""

from __future__ import annotations

import numpy as np
import pytest

from services.asr.turns import BufferFull, Committed, Started, Stopped, Turns, VADConfig

FRAME = 512  # 32 ms at 16 kHz


class Script:
    """Speech probabilities by frame index: 0.9 inside the given frame ranges, 0.1 elsewhere."""

    def __init__(self, speech: list[range]):
        self.speech, self.at, self.pending = speech, 0, 0

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        self.pending += len(samples)
        n, self.pending = divmod(self.pending, FRAME)
        probs = [0.9 if any(self.at + k in r for r in self.speech) else 0.1 for k in range(n)]
        self.at += n
        return np.array(probs, np.float32)


def feed(turns: Turns, frames: int, piece: int = 1600) -> list:
    """`frames` frames of audio whose samples count from the turns' clock, fed in `piece`-sample chunks."""
    out: list = []
    audio = np.arange(turns.total, turns.total + frames * FRAME, dtype=np.float32)
    for i in range(0, len(audio), piece):
        out += turns.feed(audio[i:i + piece])
    return out


def test_a_turn_starts_with_its_padding_and_stops_after_the_silence():
    vad = VADConfig(threshold=0.5, prefix_padding_ms=320, silence_duration_ms=480)  # 10 and 15 frames
    turns = Turns(vad, max_turn=16000 * 60, frame=FRAME, probs=Script([range(50, 80)]))
    events = feed(turns, 120)
    started, stopped, committed = events
    assert isinstance(started, Started) and started.audio_start_ms == (50 - 10) * 32
    assert isinstance(stopped, Stopped) and stopped.item_id == started.item_id
    assert stopped.audio_end_ms == (80 + 15) * 32  # the silence is part of the turn
    assert isinstance(committed, Committed) and committed.item_id == started.item_id
    # the committed audio is exactly the samples from the padded start to the end of the silence
    assert committed.audio[0] == (50 - 10) * FRAME and committed.audio[-1] == (80 + 15) * FRAME - 1
    assert len(committed.audio) == (80 + 15 - 40) * FRAME
    assert turns.item_id is None and turns.buffered <= 10 * FRAME + 1600  # only the padding is kept


def test_short_dips_do_not_end_a_turn_and_two_turns_get_two_items():
    vad = VADConfig(threshold=0.5, prefix_padding_ms=0, silence_duration_ms=320)
    turns = Turns(vad, max_turn=16000 * 60, frame=FRAME, probs=Script([range(10, 20), range(25, 40), range(80, 90)]))
    events = feed(turns, 140)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Started", "Stopped", "Committed", "Started", "Stopped", "Committed"]
    first, second = events[2], events[5]
    assert first.item_id != second.item_id
    assert first.audio[0] == 10 * FRAME and len(first.audio) == (40 + 10 - 10) * FRAME  # the dip at 20-25 kept
    assert second.audio[0] == 80 * FRAME


def test_a_turn_longer_than_the_limit_is_committed_and_the_next_starts_at_once():
    vad = VADConfig(threshold=0.5, prefix_padding_ms=0, silence_duration_ms=320)
    turns = Turns(vad, max_turn=100 * FRAME, frame=FRAME, probs=Script([range(0, 250)]))
    events = feed(turns, 300)
    commits = [e for e in events if isinstance(e, Committed)]
    assert [len(c.audio) for c in commits[:2]] == [100 * FRAME, 100 * FRAME]
    assert commits[1].audio[0] == 100 * FRAME  # contiguous: nothing lost, nothing repeated
    assert len({c.item_id for c in commits}) == len(commits) == 3
    starts = [e.audio_start_ms for e in events if isinstance(e, Started)]
    assert starts == [0, 100 * 32, 200 * 32]


def test_silence_keeps_only_the_padding_in_memory():
    vad = VADConfig(prefix_padding_ms=300)
    turns = Turns(vad, max_turn=16000 * 60, frame=FRAME, probs=Script([]))
    assert feed(turns, 5000) == []  # 160 s of silence
    assert turns.total == 5000 * FRAME and turns.buffered <= 4800 + 1600


def test_manual_commits_and_their_limits():
    turns = Turns(None, max_turn=16000 * 2, frame=FRAME)
    assert turns.commit() is None  # nothing buffered
    turns.feed(np.zeros(1000, np.float32))
    assert turns.commit() is None  # under 100 ms
    turns.feed(np.zeros(1000, np.float32))
    c = turns.commit()
    assert len(c.audio) == 2000 and turns.buffered == 0
    turns.feed(np.zeros(30000, np.float32))
    with pytest.raises(BufferFull):
        turns.feed(np.zeros(3000, np.float32))  # past 2 s: refused, the buffer unchanged
    assert turns.buffered == 30000
    turns.clear()
    assert turns.buffered == 0 and turns.total == 2000 + 30000
