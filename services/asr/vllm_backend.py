"""The ASR on vLLM: Qwen3-ASR served by the engine environment's vLLM server, one chat completion per window.

Why chat completions and not vLLM's /v1/audio/transcriptions: that route answers only text and json (no
verbose_json, no segments, no token log-probabilities), and chunks long audio by itself. Our route keeps
the windows (voice activity), the formats, the aligner pipeline and `include[]=logprobs`, so each window
is one streamed chat completion with the prompt the package builds (qwen_asr's `_build_text_prompt`):

    system: the request's `prompt` (context; "" when none)   user: the window's audio
    assistant: `language English<asr_text>` when the language is forced, continued by the model
               (continue_final_message), as the package appends that prefix to the generation prompt

with greedy decoding and the window's token budget, `logprobs` and `return_tokens_as_token_ids` (each
generated token's id and log-probability, vLLM's extension). The tokens go through the same parsing and
streaming as the transformers engine (engine.QwenASRText: the package's output parsing, the language
prefix held back, the transcript tokens after `<asr_text>`), so results, streams, usage and logprobs are
the same on both backends. vLLM batches the windows of every request itself (continuous batching); the
service's scheduler still admits (429), orders (fewest served first) and hands windows over in batches.
"""

from __future__ import annotations

import json
import re
from typing import Sequence

from services.runtime.core.errors import QwenError
from services.runtime.serving import vllm_server
from services.runtime.serving.vllm_server import VLLMBackend

from .engine import ASRItem, ASRResult, OnText, QwenASRText, forced_language, padded

BACKEND = "asr backend (vLLM)"
# One audio item per request; Qwen3-ASR takes no images or videos.
MM_LIMITS = {"audio": 1}
TOKEN_ID = re.compile(r"^token_id:(-?\d+)$")


def extra_flags() -> list[str]:
    return ["--limit-mm-per-prompt", json.dumps(MM_LIMITS)]


def managed(cfg, model_path: str, dtype: str, *, gpus: list[str] | None = None):
    return vllm_server.managed_server(cfg, "asr", str(model_path), dtype, max_model_len=cfg.vllm_max_model_len,
                                      served=vllm_server.served_names(cfg, "asr"), extra=extra_flags(), gpus=gpus)


def chat_request(model: str, item: ASRItem, language: str | None, max_tokens: int) -> dict:
    """The body of one window's chat completion (the package's prompt, greedy, streamed with token ids and
    log-probabilities)."""
    samples, rate = padded(item.audio)
    messages: list[dict] = [
        {"role": "system", "content": item.context or ""},
        {"role": "user", "content": [{"type": "audio_url",
                                      "audio_url": {"url": vllm_server.audio_data_url(samples, rate)}}]},
    ]
    body: dict = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logprobs": True,
        "return_tokens_as_token_ids": True,
    }
    if language is not None:
        messages.append({"role": "assistant", "content": f"language {language}<asr_text>"})
        body.update(continue_final_message=True, add_generation_prompt=False)
    return body


class VLLMASREngine(QwenASRText, VLLMBackend):
    """ASR engine over the ASR's vLLM server. `transcribe` runs in the scheduler's worker thread: each item
    is a request of its own, sent at once (vLLM batches them)."""

    def __init__(self, server, cfg, tokenizer, *, max_new_tokens: int, owns_server: bool = True):
        VLLMBackend.__init__(self, server, cfg, model=vllm_server.served_names(cfg, "asr")[0], label=BACKEND,
                             owns_server=owns_server)
        self.tokenizer = tokenizer
        self._read_special_tokens()
        self.max_new_tokens = max_new_tokens

    @classmethod
    def start(cls, cfg, path: str, dtype: str, *, max_new_tokens: int, gpus: list[str] | None = None
              ) -> VLLMASREngine:
        """The tokenizer (this process: parsing, token texts) and the server (blocks until /health is 200)."""
        from transformers import AutoTokenizer

        from services.runtime.serving.concurrent_calls import Serialized

        tokenizer = Serialized(AutoTokenizer.from_pretrained(path), ("__call__", "batch_decode", "decode", "encode"))
        server = vllm_server.start_server(managed(cfg, path, dtype, gpus=gpus), cfg.vllm_start_timeout + 30)
        return cls(server, cfg, tokenizer, max_new_tokens=max_new_tokens)

    def transcribe(self, items: Sequence[ASRItem], on_text: OnText | None = None) -> list[ASRResult]:
        """One result per item, in order; the same contract as QwenASREngine.transcribe (pieces while the
        window is generated, the rest at its end, tokens with their log-probabilities)."""
        if not items:
            return []
        self.require_ready()
        return self.run_all(lambda args: self._window(*args, on_text), list(enumerate(items)))

    def _window(self, index: int, item: ASRItem, on_text: OnText | None) -> ASRResult:
        language = forced_language(item.language)
        steps = self.steps([language is not None], on_text is not None,
                           lambda _row, piece, tokens: on_text(index, piece, tokens))
        steps.begin(1)
        usage: dict = {}
        for chunk in self.stream_chat(chat_request(self.model, item, language, self.max_new_tokens)):
            for choice in (chunk.get("choices") or [])[:1]:
                for entry in ((choice.get("logprobs") or {}).get("content") or []):
                    m = TOKEN_ID.match(str(entry.get("token", "")))
                    if m is None:
                        raise QwenError(f"{BACKEND} sent a token without its id (return_tokens_as_token_ids)",
                                        code="backend_error")
                    steps.add(0, int(m.group(1)), float(entry.get("logprob") or 0.0))
            if steps.streams is not None:
                steps.decode()
            usage = chunk.get("usage") or usage
        ids = steps.ids(0)
        raw = self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        emit = (lambda piece, tokens: on_text(index, piece, tokens)) if on_text else None
        return self.row_result(steps, 0, ids, raw, language, int(usage.get("prompt_tokens") or 0), emit)
