"""The Qwen3-TTS CustomVoice model behind a small Protocol; real loading code (qwen_tts), no HTTP.

What the engine does on top of `Qwen3TTSModel.generate_custom_voice`:

* Validation with clear ValueErrors (the service maps them to 400): empty text, unknown voice or
  language (case-insensitive; the message lists the valid ones), max_frames out of range, instructions on
  a model size that drops them.
* `max_frames` -> the package's `max_new_tokens`: it counts talker steps, and the token sampled at the
  last step never becomes a frame, so `max_new_tokens = max_frames + 1` gives at most `max_frames`
  frames of 1920 samples at 24 kHz (12.5 frames/s); `max_new_tokens=1` would crash, `max_frames >= 1`
  never passes it. The model stops earlier on its own EOS.
* One lock per instance around every generate: the talker writes per-call state on the module
  (`rope_deltas` at prefill) and the streaming hook sits on the shared module; concurrent calls on one
  instance give wrong audio or crash. Codec decoding is stateless and runs outside the lock, except in
  `stream()`, which holds the lock for the whole generation.
* Memory: the package forces `output_hidden_states=True`, so every step's hidden states are kept until
  the end (~0.5 GB per 2000 frames fp32 for the real 1.7B, estimated). `max_frames_limit` caps a
  request (default 8191 frames ~ 10.9 min, the real checkpoint's own default); the service splits long
  texts.

Streaming (`stream()`) without patching the package: a forward hook on `tts.model.talker` sees every
generation step; its output's `hidden_states[1]` is the finished 16-code frame t during step t+1 (None at
prefill). Generation runs in a worker thread that pushes frames to a queue; the caller's thread decodes
and yields audio as frames arrive. Raising from the hook aborts generation (cancel / consumer gone). With
batch size 1 transformers stops on EOS before the EOS token is fed back, so the EOS frame never reaches
the hook; a frame whose first code is EOS is still treated as the end, as the package does.

Decoding while streaming must reproduce the package's own decode, `decoder.chunked_decode` (chunks of
300 frames, each re-decoded with 25 frames of left context and positions restarting at the window start).
The codec decoder is causal (causal convs, causal sliding-window attention), so a frame's samples depend
only on earlier frames of its package chunk window. A streamed span of frames [a, b) is decoded from
`max(package window start, a - context_frames)` and only its new samples are kept. Exactness needs
`context_frames` >= the decoder's receptive field in frames: layers x (sliding_window - 1) for the
transformer plus ~12 frames of conv stack (`receptive_frames()`, computed from the loaded codec):
83 frames on the tiny codec (1 layer); 8 x 71 + 12 = 580 on the real 12 Hz codec, more than the
package's 325-frame window, so there each streamed span is re-decoded from the package chunk start
(at most 325 frames per decode). The default (`context_frames=None`) is that receptive field: exact on
any codec. A smaller value bounds decode cost at the price of exactness.
"""

from __future__ import annotations

import inspect
import math
import queue
import threading
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import numpy as np

DEFAULT_MAX_FRAMES = 2048  # 163.8 s at 12.5 frames/s (the package's own hard default)
MAX_FRAMES_LIMIT = 8191  # the real generation_config's max_new_tokens 8192 -> 8191 frames, ~10.9 min


@dataclass(frozen=True)
class Voice:
    id: str  # lower-case speaker name, as the model names it ("vivian", "uncle_fu")
    name: str  # display name ("Vivian", "Uncle_Fu")
    language: str  # native language ("chinese"); any supported language can be spoken
    description: str


@dataclass(frozen=True)
class SpeechItem:
    text: str
    voice: str
    language: str | None = None  # None = "auto"
    instructions: str | None = None  # style instruction ("speak softly"); 1.7B CustomVoice only
    max_frames: int = DEFAULT_MAX_FRAMES  # at most this many 80 ms frames (1920 samples each)


# The package README's speaker table for Qwen3-TTS-12Hz-{1.7B,0.6B}-CustomVoice. Dylan and Eric carry a
# dialect flag in the model config: with language chinese/auto the model uses the dialect's language id.
_VOICE_TABLE: dict[str, tuple[str, str, str]] = {
    "vivian": ("Vivian", "chinese", "female, Chinese; bright, slightly edgy young voice"),
    "serena": ("Serena", "chinese", "female, Chinese; warm, gentle young voice"),
    "uncle_fu": ("Uncle_Fu", "chinese", "male, Chinese; seasoned voice, low and mellow"),
    "dylan": ("Dylan", "chinese", "male, Chinese; Beijing dialect, youthful and clear"),
    "eric": ("Eric", "chinese", "male, Chinese; Sichuan (Chengdu) dialect, lively, slightly husky"),
    "ryan": ("Ryan", "english", "male, English; dynamic, strong rhythmic drive"),
    "aiden": ("Aiden", "english", "male, English (American); sunny, clear midrange"),
    "ono_anna": ("Ono_Anna", "japanese", "female, Japanese; playful, light and nimble"),
    "sohee": ("Sohee", "korean", "female, Korean; warm, rich in emotion"),
}


# What the real CustomVoice checkpoint serves, known without loading it (the gateway validates requests
# and lists voices from these; the engine checks again against the loaded model).
VOICES: list[Voice] = [Voice(k, *v) for k, v in _VOICE_TABLE.items()]
LANGUAGES: list[str] = ["auto", "chinese", "english", "french", "german", "italian", "japanese", "korean",
                        "portuguese", "russian", "spanish"]


class SpeechEngine(Protocol):
    sample_rate: int  # 24000
    voices: list[Voice]
    languages: list[str]  # "auto" first, then the model's languages (lower case)

    def synthesize(
        self, text: str, voice: str, language: str | None, instructions: str | None, max_frames: int
    ) -> np.ndarray:
        """float32 mono audio at `sample_rate`; a whole number of frames, at most `max_frames`."""

    def synthesize_batch(self, items: list[SpeechItem]) -> list[np.ndarray]:
        """One generate call over all items (left padded); one array per item, in order."""

    def stream(
        self,
        text: str,
        voice: str,
        language: str | None,
        instructions: str | None,
        max_frames: int,
        cancel: threading.Event | None = None,
    ) -> Iterator[np.ndarray]:
        """float32 audio chunks while generating; their concatenation equals `synthesize()`."""


class _Cancelled(Exception):
    """Raised from the talker hook to stop generation."""


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


def receptive_frames(decoder) -> int | None:
    """How many earlier frames can influence a frame's samples in the 12 Hz codec decoder.

    Transformer: each sliding-window layer reaches `sliding_window - 1` frames back. Conv stack: every
    causal conv reaches `(kernel - 1) * dilation` samples back at its own rate; a transposed conv
    (kernel k, stride s, right-trimmed) reaches `(k - 1) // s` input samples back and multiplies the
    rate by s. Modules are visited in registration order, which is the decoder's forward order.
    None if the attention is not windowed (unbounded).
    """
    cfg = decoder.config
    window = getattr(cfg, "sliding_window", None)
    if not window:
        return None
    frames = float(cfg.num_hidden_layers * (window - 1))
    rate = 1  # samples per frame at the current point of the conv stack
    for mod in decoder.modules():
        name = type(mod).__name__
        if name.endswith("CausalTransConvNet"):
            k, s = mod.conv.kernel_size[0], mod.conv.stride[0]
            frames += ((k - 1) // s) / rate
            rate *= s
        elif name.endswith("CausalConvNet"):
            frames += (mod.kernel_size - 1) / rate  # kernel_size there is the dilated span
    return math.ceil(frames) + 1


class QwenTTSEngine:
    def __init__(
        self,
        tts,
        *,
        chunk_frames: int = 6,
        first_chunk_frames: int = 2,
        context_frames: int | None = None,
        max_frames_limit: int = MAX_FRAMES_LIMIT,
    ):
        import torch

        self._torch = torch
        self.tts = tts  # qwen_tts.Qwen3TTSModel
        model = tts.model
        if model.tts_model_type != "custom_voice":
            raise ValueError(f"not a CustomVoice checkpoint (tts_model_type={model.tts_model_type!r})")
        self._lock = threading.Lock()

        st = model.speech_tokenizer
        self.sample_rate = int(st.get_output_sample_rate())
        self.samples_per_frame = int(st.get_decode_upsample_rate())
        self.frame_rate = self.sample_rate / self.samples_per_frame

        speakers = [str(s).lower() for s in tts.get_supported_speakers()]
        self.voices = [self._voice(s) for s in speakers]
        self._voice_ids = set(speakers)
        langs = [str(x).lower() for x in tts.get_supported_languages()]
        self.languages = ["auto"] + [x for x in langs if x != "auto"]
        # generate_custom_voice drops `instruct` when `tts_model_size in "0b6"` (a substring test).
        self.supports_instructions = str(model.tts_model_size) not in "0b6"
        self.max_frames_limit = int(max_frames_limit)

        self._talker = model.talker
        self._eos = int(model.config.talker_config.codec_eos_token_id)
        # transformers falls back to pad = EOS (the package passes no pad id) and logs it on every call:
        # state the same value once.
        gen_cfg = getattr(self._talker, "generation_config", None)
        if gen_cfg is not None and gen_cfg.pad_token_id is None:
            gen_cfg.pad_token_id = self._eos
        self._decoder = st.model.decoder
        self._codec_device = next(self._decoder.parameters()).device
        # The package decodes through chunked_decode with its default window: mirror its numbers.
        params = inspect.signature(self._decoder.chunked_decode).parameters
        self._pkg_chunk = int(params["chunk_size"].default)
        self._pkg_left = int(params["left_context_size"].default)
        self.receptive_frames = receptive_frames(self._decoder)
        self.chunk_frames = int(chunk_frames)
        self.first_chunk_frames = int(first_chunk_frames)
        self.context_frames = context_frames if context_frames is not None else self.receptive_frames
        if self.chunk_frames < 1 or self.first_chunk_frames < 1:
            raise ValueError("chunk_frames and first_chunk_frames must be >= 1")

    @classmethod
    def load(cls, path: str, device: str, dtype: str, threads: int | None = None, **options) -> "QwenTTSEngine":
        import torch
        from qwen_tts import Qwen3TTSModel

        from services.runtime.device import torch_dtype

        if threads:
            torch.set_num_threads(threads)
        tts = Qwen3TTSModel.from_pretrained(str(path), device_map=device, dtype=torch_dtype(dtype))
        tts.model.eval()
        return cls(tts, **options)

    # --- validation ----------------------------------------------------------------------------------

    @staticmethod
    def _voice(speaker: str) -> Voice:
        name, language, description = _VOICE_TABLE.get(speaker, (speaker.title(), "auto", "built-in voice"))
        return Voice(id=speaker, name=name, language=language, description=description)

    def check(self, item: SpeechItem) -> SpeechItem:
        """The item normalised (stripped text, lower-case voice/language), or ValueError."""
        if not isinstance(item.text, str) or not item.text.strip():
            raise ValueError("text is empty")
        voice = str(item.voice or "").strip().lower()
        if voice not in self._voice_ids:
            raise ValueError(
                f"unknown voice {item.voice!r}; valid voices: {', '.join(v.id for v in self.voices)}"
            )
        language = str(item.language).strip().lower() if item.language is not None else "auto"
        if language not in self.languages:
            raise ValueError(f"unknown language {item.language!r}; valid languages: {', '.join(self.languages)}")
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
        return SpeechItem(item.text.strip(), voice, language, instructions or None, int(n))

    # --- generation ----------------------------------------------------------------------------------

    def _generate_codes(self, items: Sequence[SpeechItem], max_frames: int):
        """Talker codes (T_i, 16) per item: generate_custom_voice's body up to (excluding) decoding.

        Call with the lock held. Uses the wrapper's own prompt/tokenize/defaults helpers so the codes are
        exactly those generate_custom_voice would produce.
        """
        tts = self.tts
        input_ids = tts._tokenize_texts([tts._build_assistant_text(i.text) for i in items])
        instruct_ids = [
            tts._tokenize_texts([tts._build_instruct_text(i.instructions)])[0] if i.instructions else None
            for i in items
        ]
        gen = tts._merge_generate_kwargs(max_new_tokens=max_frames + 1)  # talker steps = frames + 1
        codes, _ = tts.model.generate(
            input_ids=input_ids,
            instruct_ids=instruct_ids,
            languages=[i.language for i in items],
            speakers=[i.voice for i in items],
            non_streaming_mode=True,
            **gen,
        )
        return codes

    def _decode(self, codes_list) -> list[np.ndarray]:
        wavs, _ = self.tts.model.speech_tokenizer.decode([{"audio_codes": c} for c in codes_list])
        return [np.ascontiguousarray(w, dtype=np.float32) for w in wavs]

    def synthesize(
        self,
        text: str,
        voice: str,
        language: str | None = None,
        instructions: str | None = None,
        max_frames: int = DEFAULT_MAX_FRAMES,
    ) -> np.ndarray:
        return self.synthesize_batch([SpeechItem(text, voice, language, instructions, max_frames)])[0]

    def synthesize_batch(self, items: list[SpeechItem]) -> list[np.ndarray]:
        items = [self.check(i) for i in items]
        if not items:
            return []
        torch = self._torch
        with self._lock, torch.inference_mode():
            codes = self._generate_codes(items, max(i.max_frames for i in items))
        # One generate runs to the longest max_frames: cut each item to its own (the codec is causal).
        codes = [c[: i.max_frames] for c, i in zip(codes, items)]
        return self._decode(codes)

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
        """Audio chunks (float32, 24 kHz) while the talker generates.

        Validates now (ValueError before any work); the returned generator takes the lock at its first
        `next()` and holds it until generation has ended: iterate it to the end or `close()` it
        (closing, or setting `cancel`, stops generation within one talker step and releases the lock).
        The first chunk comes after `first_chunk_frames` frames, then every `chunk_frames` frames (more
        if decoding lags behind generation: whatever has arrived is decoded together). Cancellation ends
        the iteration quietly; an error in generation is re-raised here.
        """
        item = self.check(SpeechItem(text, voice, language, instructions, max_frames))
        first = int(first_chunk_frames if first_chunk_frames is not None else self.first_chunk_frames)
        chunk = int(chunk_frames if chunk_frames is not None else self.chunk_frames)
        if first < 1 or chunk < 1:
            raise ValueError("chunk_frames and first_chunk_frames must be >= 1")
        ctx = context_frames if context_frames is not None else self.context_frames
        return self._stream(item, first, chunk, ctx, cancel if cancel is not None else threading.Event())

    def _stream(self, item: SpeechItem, first: int, chunk: int, ctx: int | None, cancel: threading.Event):
        torch = self._torch
        frames_q: queue.SimpleQueue = queue.SimpleQueue()
        stop = threading.Event()
        eos = self._eos

        def hook(_module, _args, output):
            if stop.is_set() or cancel.is_set():
                raise _Cancelled()
            codes = output.hidden_states[1]  # (1, 16) finished frame of the previous step; None at prefill
            if codes is None:
                return
            if int(codes[0, 0]) == eos:  # batch 1 stops before feeding EOS back; kept for safety
                stop.set()
                return
            frames_q.put(codes[0].detach().clone())

        def work():
            try:
                with torch.inference_mode():
                    self._generate_codes([item], item.max_frames)
            except _Cancelled:
                pass
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                frames_q.put(_Failed(e))
            finally:
                frames_q.put(_DONE)

        with self._lock:
            handle = self._talker.register_forward_hook(hook)
            worker = threading.Thread(target=work, name="tts-stream", daemon=True)
            try:
                worker.start()
                frames: list = []
                emitted = 0
                need = first
                done = False
                while not done:
                    got = [frames_q.get()]
                    while True:  # take whatever else has arrived: decode it together
                        try:
                            got.append(frames_q.get_nowait())
                        except queue.Empty:
                            break
                    for x in got:
                        if x is _DONE:
                            done = True
                        elif isinstance(x, _Failed):
                            raise x.error
                        else:
                            frames.append(x)
                    if cancel.is_set():
                        return
                    if len(frames) - emitted >= need or (done and len(frames) > emitted):
                        wav = self._decode_span(frames, emitted, len(frames), ctx)
                        emitted = len(frames)
                        need = chunk
                        yield wav
            finally:
                stop.set()
                if worker.ident is not None:  # started
                    worker.join()
                handle.remove()

    def _decode_span(self, frames: list, a: int, b: int, ctx: int | None) -> np.ndarray:
        """Samples of frames [a, b) exactly as the package's chunked_decode of all frames gives them.

        Each package chunk [c, c + 300) is decoded from `c - 25` (0 for the first); a span inside it is
        decoded from max(that start, a - ctx) and only the samples of the new frames are kept.
        """
        torch = self._torch
        spf = self.samples_per_frame
        size, left = self._pkg_chunk, self._pkg_left
        pieces = []
        with torch.inference_mode():
            while a < b:
                start = (a // size) * size
                window = start - (left if start - left > 0 else start)  # chunked_decode's rule
                end = min(b, start + size)
                w = window if ctx is None else max(window, a - ctx)
                codes = torch.stack(frames[w:end]).to(self._codec_device).clamp(min=0)
                wav = self._decoder(codes.T.unsqueeze(0))[0, 0, (a - w) * spf :]
                pieces.append(wav.float().cpu().numpy())
                a = end
        return np.ascontiguousarray(np.concatenate(pieces), dtype=np.float32)

    def warmup(self) -> None:
        # First calls pay for lazy imports, kernel selection and the codec's first decode.
        self.synthesize("Warm up.", self.voices[0].id, None, None, max_frames=4)
