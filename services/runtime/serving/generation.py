"""Token streaming for transformers `generate`, written once (captioner, VL, diagram).

`stream_generate(run, tokenizer, cancel)` runs `run(streamer, stopping_criteria)` in a worker thread and
yields decoded text pieces as tokens come; it returns (as the generator's value) what `run` returned.
Setting `cancel` (or closing the generator) stops generation at the next step; the worker is always
joined, and its error re-raised here.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Generator

# Below this a temperature means greedy: dividing logits by ~1e-300 overflows to inf and sampling fails
# ("probability tensor contains inf/nan"; found by the fuzzer).
MIN_TEMPERATURE = 1e-3


def is_sampling(temperature: float | None) -> bool:
    return temperature is not None and temperature >= MIN_TEMPERATURE


def stream_generate(run: Callable[[Any, Any], Any], tokenizer, cancel: threading.Event) -> Generator[str, None, Any]:
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return cancel.is_set()

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    result: dict = {}

    def work():
        try:
            result["value"] = run(streamer, StoppingCriteriaList([_Cancelled()]))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            result["error"] = exc
            streamer.end()

    worker = threading.Thread(target=work, name="generate-stream", daemon=True)
    worker.start()
    try:
        for piece in streamer:
            if piece:
                yield piece
    finally:
        if worker.is_alive():  # the consumer left early: stop at the next step
            cancel.set()
        worker.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")
