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
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

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


def xgrammar():
    """The xgrammar module. Its FFI layer otherwise tries, at every import, to compile an optional torch
    extension with a C++ toolchain (seconds of CPU, then a warning when there is none): not used here."""
    import os

    os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")
    import xgrammar as xgr

    return xgr


class Constraint(BaseModel):
    """Structured generation: decoding held to a grammar, so the answer can only be text it accepts.

    `ebnf`: an EBNF grammar in xgrammar's dialect (vLLM's `structured_outputs.grammar` takes the same text);
    `json_schema`: a JSON schema as JSON text (OpenAI's `response_format` json_schema; json_object is the
    schema {"type": "object"}). Compiled by xgrammar on the transformers engines and by vLLM's own xgrammar
    backend on vLLM; JSON is written without free whitespace on both (a random-weight model would otherwise
    fill the budget with it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["ebnf", "json_schema"]
    spec: str = Field(..., min_length=1, max_length=100_000)

    def check(self) -> None:
        """ValueError when xgrammar cannot compile it (a client's mistake: a 400, before any queueing)."""
        xgr = xgrammar()
        try:
            if self.kind == "ebnf":
                xgr.Grammar.from_ebnf(self.spec)
            else:
                xgr.Grammar.from_json_schema(self.spec, any_whitespace=False)
        except (RuntimeError, ValueError, TypeError) as exc:  # xgrammar's C++ errors are RuntimeErrors
            what = "grammar" if self.kind == "ebnf" else "JSON schema"
            raise ValueError(f"the {what} cannot be used: {str(exc).splitlines()[0][:300]}") from None

    def structured_outputs(self) -> dict:
        """vLLM's `structured_outputs` request field for it."""
        import json

        return {"grammar": self.spec} if self.kind == "ebnf" else {"json": json.loads(self.spec)}


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
