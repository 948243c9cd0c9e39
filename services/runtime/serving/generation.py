"""Text generation, written once for the captioner, VL and diagram: the greedy/sampling rule, token
streaming for transformers `generate`, and the messages a text-generating model service answers with.

`stream_generate(run, tokenizer, emit, cancel)` calls `run(streamer, stopping_criteria)` in the calling
thread (a runtime.serving.streams.ThreadStream worker) and emits the decoded text pieces as tokens come;
it returns what `run` returned. Setting `cancel` stops generation at the next step.

`Completion` is a whole answer; a streamed one is JSON lines of `Delta`s (`Delta.line()`): text pieces,
then one with `finish_reason` and `usage`.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from pydantic import BaseModel, computed_field

# Below this a temperature means greedy: dividing logits by ~1e-300 overflows to inf and sampling fails
# ("probability tensor contains inf/nan"; found by the fuzzer).
MIN_TEMPERATURE = 1e-3


def is_sampling(temperature: float | None) -> bool:
    return temperature is not None and temperature >= MIN_TEMPERATURE


class Usage(BaseModel):
    """Token counts (OpenAI's `usage`)."""

    prompt_tokens: int
    completion_tokens: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Completion(BaseModel):
    text: str
    finish_reason: str  # "stop" | "length" (a vLLM backend may name others: passed on)
    usage: Usage


class Delta(BaseModel):
    """One line of a streamed answer: a text piece, or the last line with finish_reason and usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None

    def line(self) -> bytes:
        return self.model_dump_json(exclude_defaults=True).encode() + b"\n"


def stream_generate(run: Callable[[Any, Any], Any], tokenizer, emit: Callable[[str], None],
                    cancel: threading.Event) -> Any:
    from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return cancel.is_set()

    class _Emitting(TextStreamer):
        """TextStreamer's decoding (whole words, the prompt skipped), each piece emitted instead of printed."""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                emit(text)

    streamer = _Emitting(tokenizer, skip_prompt=True, skip_special_tokens=True)
    return run(streamer, StoppingCriteriaList([_Cancelled()]))
