"""Speech with word timings: what the TTS synthesized, timed word by word by the forced aligner.

POST /v1/audio/speech with `timestamps: true` (an extension, off by default; the aligner must be enabled:
transcribe_align.check):
- streamed (`stream_format: "sse"`): the input is spoken one sentence at a time, in order, through one
  encoder (one continuous audio stream); when a sentence's audio is complete, the aligner times its words
  inside that sentence's audio while the next sentence streams, and a `speech.audio.words` event carries
  them, offsets counted from the start of the whole audio. Events come in order, after the audio they
  time; clients that do not know the event type skip it.
- not streamed: one synthesis of the whole input, its sentences timed by one aligner call over the whole
  audio, answered as JSON: the encoded audio (base64) with the words beside it.

Times are seconds of the audio the client receives: divided by `speed` (the audio is time-stretched when
encoded). The aligner's unit is a word (one CJK character in scripts without spaces), the same units
as the transcription route's words. Any aligner error is the request's: a failed timing never becomes an
empty word list.
"""

from __future__ import annotations

import numpy as np

from services.aligner.contract import Alignment, AlignSpans, TextSpan
from services.runtime.codecs.audio import resample
from services.runtime.core.languages import ALIGNER as ALIGNER_LANGUAGES
from services.runtime.edge import remote

from .transcribe_align import has_words, split_sentences

ALIGNER_RATE = 16000


def sentences(text: str) -> list[str]:
    """The input as the sentences spoken (and timed) one at a time; a piece without any word is kept with
    the sentence before it (alone it would be synthesized for nothing the aligner can time)."""
    out: list[str] = []
    for s in split_sentences(text) or [text]:
        if out and not has_words(s):
            out[-1] = f"{out[-1]} {s}"
        else:
            out.append(s)
    return out


def aligner_language(language: str | None) -> str | None:
    """The aligner's ISO code for the TTS language (None: auto, or one the aligner detects itself)."""
    try:
        return ALIGNER_LANGUAGES.code(ALIGNER_LANGUAGES.parse(language))
    except ValueError:
        return None


def word_dicts(alignment: Alignment, *, offset: float, speed: float) -> list[dict]:
    """The alignment's words as the client receives them: {"word", "start", "end"} in seconds of the
    delivered audio (times / speed, shifted by `offset`, already in delivered seconds)."""
    return [{"word": w.text, "start": round(offset + w.start / speed, 3), "end": round(offset + w.end / speed, 3)}
            for seg in alignment.segments for w in seg.words]


async def time_words(gw, audio: np.ndarray, rate: int, spans: list[tuple[float, float, list[str]]],
                     language: str | None, *, offset: float = 0.0, speed: float = 1.0) -> list[dict]:
    """The words of `spans` ((start, end) seconds of `audio` at `rate`, and the sentences said there), each
    aligned inside its span; spans without any word are not sent."""
    spans = [s for s in spans if any(has_words(line) for line in s[2])]
    if not spans:
        return []
    text = AlignSpans(spans=[TextSpan(start=a, end=b, lines=lines) for a, b, lines in spans],
                      language=aligner_language(language))
    samples = resample(audio, rate, ALIGNER_RATE)
    aligned = await remote.call("aligner", lambda: gw.aligner.to_async.align_spans(audio=samples, text=text),
                                into=Alignment)
    return word_dicts(aligned, offset=offset, speed=speed)
