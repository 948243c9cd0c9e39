"""The Qwen3-TTS CustomVoice engine: real loading code (qwen_tts), no HTTP.

* It checks what only the loaded model knows (ValueError; the service maps it to 400): `max_frames` out
  of range, instructions on a model size that drops them. Text, voice and language arrive checked
  (services.tts.contract); the package matches voice and language names case-insensitively.
* Generation is continuous batching (services.tts.batching.TalkerLoop): every request, streamed or not,
  joins the running batch at the next talker step and leaves it on EOS, at its frame cap (`max_frames`:
  at most that many frames of 1920 samples at 24 kHz, 12.5 frames/s) or when cancelled. Its codes are the
  ones the package's generate gives the request alone (greedy exactly; sampled: the same distribution).
* Decoding (services.tts.decoding.CodecWorker, its own thread): streamed requests get audio every few
  frames with exact left context, decoded in one call for every stream due; other requests are decoded at
  their end by the package's own decode.
* Sampling and memory (services.tts.talker): the checkpoint's sampling values, resolved once at load
  (`self.sampling`); no per-request knobs (OpenAI's speech API has none), so two requests for the same
  text give different audio on the real checkpoint. Memory: the KV cache only (the package's generate
  also keeps every step's hidden states), bounded by `max_batch_frames` tokens over the batch
  (rows x the longest row's prompt + frame cap); one request is capped at it too.

`start()` is the non-blocking entry (the service's); `synthesize`, `synthesize_batch` and `stream` are
blocking conveniences over it (warm-up, tests, benches).
"""

from __future__ import annotations

import inspect
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from .batching import LENGTH, Row, TalkerLoop
from .codec import receptive_frames
from .decoding import CodecWorker, Job
from .talker import kv_bytes_per_token, sampling_kwargs
from .voices import Voice, voice_of

DEFAULT_MAX_FRAMES = 2048  # 163.8 s at 12.5 frames/s (the package's own hard default)
MAX_FRAMES_LIMIT = 8191  # the real generation_config's max_new_tokens 8192 -> 8191 frames, ~10.9 min


@dataclass(frozen=True)
class SpeechItem:
    text: str
    voice: str
    language: str | None = None  # None = "auto"
    instructions: str | None = None  # style instruction ("speak softly"); 1.7B CustomVoice only
    max_frames: int = DEFAULT_MAX_FRAMES  # at most this many 80 ms frames (1920 samples each)


@dataclass(frozen=True)
class Finished:
    """How a request's generation ended: "stop" (EOS), "length" (its frame cap: the audio is cut) or
    "cancelled"; and how many frames it made."""

    reason: str
    frames: int
    prompt_tokens: int = 0

    @property
    def truncated(self) -> bool:
        return self.reason == LENGTH


class QwenTTSEngine:
    def __init__(
        self,
        tts,
        *,
        chunk_frames: int = 6,
        first_chunk_frames: int = 2,
        context_frames: int | None = None,
        max_frames_limit: int = MAX_FRAMES_LIMIT,
        max_batch_frames: int = MAX_FRAMES_LIMIT,
        batch_wait_ms: float = 0.0,
        sampling: dict | None = None,
        max_batch_size: int = 8,
    ):
        import torch

        self._torch = torch
        self.tts = tts  # qwen_tts.Qwen3TTSModel
        model = tts.model
        if model.tts_model_type != "custom_voice":
            raise ValueError(f"not a CustomVoice checkpoint (tts_model_type={model.tts_model_type!r})")
        st = model.speech_tokenizer
        self.sample_rate = int(st.get_output_sample_rate())
        self.samples_per_frame = int(st.get_decode_upsample_rate())
        self.frame_rate = self.sample_rate / self.samples_per_frame

        self.voices: list[Voice] = [voice_of(str(s).lower()) for s in tts.get_supported_speakers()]
        langs = [str(x).lower() for x in tts.get_supported_languages()]
        self.languages = ["auto"] + [x for x in langs if x != "auto"]
        # generate_custom_voice drops `instruct` when `tts_model_size in "0b6"` (a substring test).
        self.supports_instructions = str(model.tts_model_size) not in "0b6"
        # Generation memory: rows x the longest row's tokens (prompt + frame cap) is bounded by
        # max_batch_frames, so one request cannot exceed it either.
        self.max_batch_frames = int(max_batch_frames)
        if self.max_batch_frames < 2:
            raise ValueError("max_batch_frames must be >= 2")
        self.max_frames_limit = min(int(max_frames_limit), self.max_batch_frames)
        self.bytes_per_frame = kv_bytes_per_token(
            model.config.talker_config, next(model.talker.parameters()).element_size()
        )
        self.sampling = sampling_kwargs(tts, sampling)
        self.loop = TalkerLoop(tts, self.sampling, max_batch_size=max_batch_size, max_tokens=self.max_batch_frames,
                               gather_seconds=batch_wait_ms / 1000.0)
        self._prompt_lock = threading.Lock()  # loop.prompt patches the talker for the call

        self._eos = int(model.config.talker_config.codec_eos_token_id)
        decoder = st.model.decoder
        # The package decodes through chunked_decode with its default window: mirror its numbers.
        params = inspect.signature(decoder.chunked_decode).parameters
        self.receptive_frames = receptive_frames(decoder)
        self.chunk_frames = int(chunk_frames)
        self.first_chunk_frames = int(first_chunk_frames)
        self.context_frames = context_frames if context_frames is not None else self.receptive_frames
        if self.chunk_frames < 1 or self.first_chunk_frames < 1:
            raise ValueError("chunk_frames and first_chunk_frames must be >= 1")
        self.codec = CodecWorker(st, chunk_size=int(params["chunk_size"].default),
                                 left_context=int(params["left_context_size"].default))

    @classmethod
    def load(cls, path: str, device: str, dtype: str, threads: int | None = None, **options) -> "QwenTTSEngine":
        import torch
        from qwen_tts import Qwen3TTSModel

        from services.runtime.serving.device import torch_dtype

        if threads:
            torch.set_num_threads(threads)
        tts = Qwen3TTSModel.from_pretrained(str(path), device_map=device, dtype=torch_dtype(dtype))
        tts.model.eval()
        return cls(tts, **options)

    # --- validation ----------------------------------------------------------------------------------

    def check(self, item: SpeechItem) -> SpeechItem:
        """The item as generation takes it (language None -> "auto", instructions stripped or None), or
        ValueError for what this model cannot do."""
        instructions = item.instructions.strip() if item.instructions else None
        if instructions and not self.supports_instructions:
            raise ValueError("instructions are not supported by this model size (0.6B CustomVoice)")
        n = item.max_frames
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise ValueError(f"max_frames must be an integer (got {n!r})")
        if n < 1:
            raise ValueError(f"max_frames must be >= 1 (got {n})")
        if n > self.max_frames_limit:
            raise ValueError(f"max_frames {n} exceeds the limit of {self.max_frames_limit}")
        language = item.language if item.language is not None else "auto"
        return SpeechItem(item.text, item.voice, language, instructions or None, int(n))

    # --- generation ----------------------------------------------------------------------------------

    def start(self, item: SpeechItem, emit: Callable[[np.ndarray], None], done: Callable[[Finished, BaseException | None], None],
              *, stream: bool, cancel: threading.Event | None = None, first_chunk_frames: int | None = None,
              chunk_frames: int | None = None, context_frames: int | None = None,
              preparing=None) -> threading.Event:
        """Join the running batch. `emit` gets float32 audio (streamed: chunks as they are decoded; else the
        whole audio once), then `done(Finished, error)` exactly once; both on the engine's threads, so they
        must only hand the data on. Returns the cancel event (set it when the client is gone: the request
        leaves the batch within one step). ValueError before any work for what the model cannot do.
        `preparing`: the loop's count of this request as preparing, taken by the caller when the request
        arrived (else taken here); released once the request is submitted."""
        item = self.check(item)
        first = int(first_chunk_frames if first_chunk_frames is not None else self.first_chunk_frames)
        chunk = int(chunk_frames if chunk_frames is not None else self.chunk_frames)
        if first < 1 or chunk < 1:
            raise ValueError("chunk_frames and first_chunk_frames must be >= 1")
        with preparing or self.loop.preparing():  # an idle loop waits for it: requests arriving together start together
            with self._prompt_lock, self._torch.inference_mode():
                prompt, pad = self.loop.prompt(item.text, item.voice, item.language, item.instructions)
            frames = min(item.max_frames, self.loop.max_tokens - prompt.shape[1])
            if frames < 1:
                raise ValueError("the input is too long for this engine's generation budget (max_batch_frames)")
            tokens = int(prompt.shape[1])
            job = Job(emit, lambda reason, error, n: done(Finished(reason, n, tokens), error), stream, first, chunk,
                      context=context_frames if context_frames is not None else self.context_frames)
            if cancel is not None:
                job.cancel = cancel
            self.loop.submit(Row(prompt, pad, frames, lambda f: self.codec.frame(job, f),
                                 lambda reason, error: self.codec.end(job, reason, error), cancel=job.cancel))
        return job.cancel

    def synthesize(
        self,
        text: str,
        voice: str,
        language: str | None = None,
        instructions: str | None = None,
        max_frames: int = DEFAULT_MAX_FRAMES,
    ) -> np.ndarray:
        """float32 mono audio at `sample_rate`; a whole number of frames, at most `max_frames`."""
        return self.synthesize_batch([SpeechItem(text, voice, language, instructions, max_frames)])[0]

    def synthesize_batch(self, items: list[SpeechItem]) -> list[np.ndarray]:
        """One array per item, in order; the items run together in the loop (with whatever else runs)."""
        items = [self.check(i) for i in items]
        out: list = [None] * len(items)
        errors: list = []
        left = threading.Semaphore(0)

        for k, item in enumerate(items):
            def emit(wav, k=k):
                out[k] = wav

            def done(fin, error):
                if error is not None:
                    errors.append(error)
                left.release()

            self.start(item, emit, done, stream=False)
        for _ in items:
            left.acquire()
        if errors:
            raise errors[0]
        return [o if o is not None else np.zeros(0, np.float32) for o in out]

    def stream(
        self,
        text: str,
        voice: str,
        language: str | None = None,
        instructions: str | None = None,
        max_frames: int = DEFAULT_MAX_FRAMES,
        cancel: threading.Event | None = None,
        *,
        chunk_frames: int | None = None,
        first_chunk_frames: int | None = None,
        context_frames: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Audio chunks (float32, 24 kHz) while the talker generates: their concatenation is the package's
        decode of the frames this request generated (within float tolerance). Validates now (ValueError
        before any work); closing the iterator, or setting `cancel`, ends the request within one step.
        The first chunk comes after `first_chunk_frames` frames, then every `chunk_frames` frames (more if
        decoding lags: whatever has arrived is decoded together). An error in generation is re-raised."""
        q: queue.SimpleQueue = queue.SimpleQueue()
        cancel = self.start(SpeechItem(text, voice, language, instructions, max_frames), q.put,
                            lambda fin, error: q.put((fin, error)), stream=True, cancel=cancel,
                            first_chunk_frames=first_chunk_frames, chunk_frames=chunk_frames,
                            context_frames=context_frames)
        return self._chunks(q, cancel)

    @staticmethod
    def _chunks(q: queue.SimpleQueue, cancel: threading.Event) -> Iterator[np.ndarray]:
        try:
            while not isinstance(x := q.get(), tuple):
                if cancel.is_set():  # cancelled by the caller: what is still queued is not wanted
                    return
                yield x
            if x[1] is not None:
                raise x[1]
        finally:
            cancel.set()

    def warmup(self) -> None:
        # First calls pay for lazy imports, kernel selection and the codec's first decode.
        self.synthesize("Warm up.", self.voices[0].id, None, None, max_frames=4)
