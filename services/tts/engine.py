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
* Sampling: the real generation_config.json samples (talker and sub-talker: temperature 0.9, top_k 50,
  top_p 1.0; repetition_penalty 1.05). `sampling_kwargs()` resolves those values once at load with the
  package's own merge rule and every generate passes them explicitly (`self.sampling`); the tiny
  checkpoint's file is greedy. There are no per-request knobs: one generate samples all its items with
  one set of values, and OpenAI's speech API has none. So two requests for the same text give different
  audio, batched output is not the output the item would get alone, and a stream is not the audio a
  separate `synthesize()` would give; only with a fixed seed and batch 1 are the streamed and the
  non-streamed codes the same, and then their audio agrees within float tolerance (fp16/bf16 kernels
  differ with sequence length), not bit for bit.
* Memory: the package forces `output_hidden_states=True`, so every step's hidden states (all layers)
  stay until the end, next to the KV cache: `generation_bytes_per_frame()`, 228 KiB per frame and item
  in float16 for the real 1.7B (4 x 8191 frames: 7.1 GiB). One generate runs every item to the longest
  one, so a batch costs items x longest frames: `split_batch()` runs a batch over `max_batch_frames` as
  consecutive smaller generates, and `max_frames_limit` (also capped by the budget) bounds one request
  (default 8191 frames ~ 10.9 min, the real checkpoint's own default).

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
`max(package window start, a - context_frames)` and only its new samples are kept (`decode_windows()`).
Exactness needs `context_frames` >= the decoder's receptive field in frames (`receptive_frames()`,
computed from the loaded codec): layers x (sliding_window - 1) for the transformer, 2 for the conv
before it and 10 for the upsampling stack after it. 83 frames on the tiny codec (1 layer); 8 x 71 + 12
= 580 on the real 12 Hz codec, more than the package's 325-frame window, so there each streamed span is
re-decoded from the package chunk start (at most 325 frames per decode): with 6-frame chunks ~30 frames
are decoded per streamed frame (~14 on the tiny), against ~1.1 for the non-streamed decode; the real
decoder costs ~5 GFLOP per decoded frame. The default (`context_frames=None`) is that receptive field:
exact on any codec. A smaller value bounds decode cost at the price of exactness; larger
`chunk_frames` cut the re-decoding too.
"""

from __future__ import annotations

import inspect
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
# and lists voices from these, and its languages from runtime.core.languages.TTS_LANGUAGES; the engine checks
# again against the loaded model).
VOICES: list[Voice] = [Voice(k, *v) for k, v in _VOICE_TABLE.items()]


class SpeechEngine(Protocol):
    sample_rate: int  # 24000
    voices: list[Voice]
    languages: list[str]  # "auto" first, then the model's languages (lower case)

    def synthesize(
        self, text: str, voice: str, language: str | None, instructions: str | None, max_frames: int
    ) -> np.ndarray:
        """float32 mono audio at `sample_rate`; a whole number of frames, at most `max_frames`."""

    def synthesize_batch(self, items: list[SpeechItem]) -> list[np.ndarray]:
        """Generate calls over the items (left padded; as few as the frame budget allows); one array
        per item, in order."""

    def stream(
        self,
        text: str,
        voice: str,
        language: str | None,
        instructions: str | None,
        max_frames: int,
        cancel: threading.Event | None = None,
    ) -> Iterator[np.ndarray]:
        """float32 audio chunks while generating: their concatenation is the package's decode of the
        frames this call generated (within float tolerance). It equals a separate `synthesize()` only
        where generation is reproducible (greedy, or the same seed), as on the tiny checkpoint."""


class _Cancelled(Exception):
    """Raised from the talker hook to stop generation."""


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


def receptive_frames(decoder) -> int | None:
    """How many earlier frames influence a frame's samples in the 12 Hz codec decoder (exact).

    Walks back from the first sample of frame t, output to input, in the units of each layer's input:
    a causal conv (effective kernel K = (kernel - 1) * dilation + 1, stride s, left-padded by K - s)
    reaches input sample i * s - K + s; a transposed conv (kernel k, stride s, right-trimmed) reaches
    input sample ceil((j - k + 1) / s); each sliding-window attention layer reaches `sliding_window - 1`
    frames back. Convs are visited in reverse registration order: the decoder's upsampling stack is
    registered in forward order, and the conv before the transformer (`pre_conv`) runs at the frame rate
    like the transformer, so where it falls among them does not matter. Real 12 Hz codec: 10 frames
    (upsampling stack) + 8 x 71 (attention) + 2 (pre_conv) = 580; the tiny codec (1 layer): 83.
    None if the attention is not windowed (unbounded).
    """
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import (
        Qwen3TTSTokenizerV2CausalConvNet as CausalConv,
        Qwen3TTSTokenizerV2CausalTransConvNet as CausalTransConv,
    )

    cfg = decoder.config
    window = getattr(cfg, "sliding_window", None)
    if not window:
        return None
    pos = 0  # earliest input sample reached, relative to the first sample of frame t (<= 0)
    for mod in reversed([m for m in decoder.modules() if isinstance(m, (CausalConv, CausalTransConv))]):
        if isinstance(mod, CausalTransConv):
            k, s = mod.conv.kernel_size[0], mod.conv.stride[0]
            pos = -((k - 1 - pos) // s)  # ceil((pos - k + 1) / s)
        else:
            pos = pos * mod.stride - mod.kernel_size + mod.stride  # mod.kernel_size: the dilated span
    return -pos + cfg.num_hidden_layers * (window - 1)


def decode_windows(
    a: int, b: int, context: int | None, chunk_size: int, left_context: int
) -> list[tuple[int, int, int]]:
    """The codec calls that give frames [a, b) as the package's `chunked_decode` of all frames does.

    Each (start, first, end): decode frames [start, end) and keep the samples of [first, end).
    `chunked_decode` decodes chunk [c, c + chunk_size) from c - left_context (0 for the first chunk); a
    span inside it starts at max(that, a - context), `context` None: at the chunk's own start.
    """
    out = []
    while a < b:
        chunk = (a // chunk_size) * chunk_size
        window = chunk - (left_context if chunk - left_context > 0 else chunk)  # chunked_decode's rule
        end = min(b, chunk + chunk_size)
        out.append((window if context is None else max(window, a - context), a, end))
        a = end
    return out


def generation_bytes_per_frame(talker_config, dtype_bytes: int) -> int:
    """Device memory one generated frame adds per batch item while a generate runs (freed at its end).

    qwen_tts's generate forces `output_hidden_states=True`: every step keeps the talker's hidden states
    of all layers plus the final norm ((layers + 1) x hidden values), next to the KV cache (layers x 2 x
    kv_heads x head_dim). Real 1.7B talker: (29 x 2048 + 2 x 28 x 8 x 128) x 2 bytes = 228 KiB in
    float16 (each prompt token costs the same). The sub-talker's per-step state is freed every step.
    """
    c = talker_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kept = (c.num_hidden_layers + 1) * c.hidden_size
    kv_cache = c.num_hidden_layers * 2 * c.num_key_value_heads * head_dim
    return (kept + kv_cache) * int(dtype_bytes)


def split_batch(frames: Sequence[int], budget: int) -> list[list[int]]:
    """Item indices grouped into generate calls that each cost at most `budget` frames x items.

    One generate keeps state for every item up to the longest one's frames, so a group costs
    len(group) x max(frames). Longest first, so that similar lengths share a call; an item over the
    budget on its own runs alone. Indices inside a group keep the input order.
    """
    groups: list[list[int]] = []
    for i in sorted(range(len(frames)), key=lambda i: -frames[i]):  # stable: ties keep input order
        if groups and (len(groups[-1]) + 1) * frames[groups[-1][0]] <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [sorted(g) for g in groups]


SAMPLING_KEYS = ("do_sample", "top_k", "top_p", "temperature", "repetition_penalty",
                 "subtalker_dosample", "subtalker_top_k", "subtalker_top_p", "subtalker_temperature")


def sampling_kwargs(tts, overrides: dict | None = None) -> dict:
    """The talker's and sub-talker's sampling arguments: `overrides`, else the checkpoint's
    generation_config.json, else the package's hard defaults (the package's own merge rule). The real
    CustomVoice file samples: do_sample true, temperature 0.9, top_k 50, top_p 1.0, repetition_penalty
    1.05, the sub-talker likewise."""
    unknown = set(overrides or {}) - set(SAMPLING_KEYS)
    if unknown:
        raise ValueError(f"unknown sampling argument(s) {sorted(unknown)}; known: {', '.join(SAMPLING_KEYS)}")
    merged = tts._merge_generate_kwargs(**(overrides or {}))
    return {k: merged[k] for k in SAMPLING_KEYS}


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
        sampling: dict | None = None,
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
        # Generation memory: items x longest frames per generate is bounded by max_batch_frames, so one
        # request cannot exceed it either.
        self.max_batch_frames = int(max_batch_frames)
        if self.max_batch_frames < 2:
            raise ValueError("max_batch_frames must be >= 2")
        self.max_frames_limit = min(int(max_frames_limit), self.max_batch_frames)
        self.bytes_per_frame = generation_bytes_per_frame(
            model.config.talker_config, next(model.talker.parameters()).element_size()
        )
        self.sampling = sampling_kwargs(tts, sampling)

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

        from services.runtime.serving.device import torch_dtype

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
        codes, _ = tts.model.generate(
            input_ids=input_ids,
            instruct_ids=instruct_ids,
            languages=[i.language for i in items],
            speakers=[i.voice for i in items],
            non_streaming_mode=True,
            max_new_tokens=max_frames + 1,  # talker steps = frames + 1
            **self.sampling,
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
        torch = self._torch
        out: list = [None] * len(items)
        # Items x longest frames over the budget: consecutive smaller generates (same device time).
        for group in split_batch([i.max_frames for i in items], self.max_batch_frames):
            part = [items[k] for k in group]
            with self._lock, torch.inference_mode():
                codes = self._generate_codes(part, max(i.max_frames for i in part))
            # One generate runs to the longest max_frames: cut each item to its own (the codec is causal).
            codes = [c[: i.max_frames] for c, i in zip(codes, part)]
            for k, wav in zip(group, self._decode(codes)):
                out[k] = wav
        return out

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
        pieces = []
        with torch.inference_mode():
            for w, first, end in decode_windows(a, b, ctx, self._pkg_chunk, self._pkg_left):
                codes = torch.stack(frames[w:end]).to(self._codec_device).clamp(min=0)
                wav = self._decoder(codes.T.unsqueeze(0))[0, 0, (first - w) * spf :]
                pieces.append(wav.float().cpu().numpy())
        return np.ascontiguousarray(np.concatenate(pieces), dtype=np.float32)

    def warmup(self) -> None:
        # First calls pay for lazy imports, kernel selection and the codec's first decode.
        self.synthesize("Warm up.", self.voices[0].id, None, None, max_frames=4)
