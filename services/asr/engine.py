"""Qwen3-ASR engines: transformers in this process (any device) or a vLLM server (services/asr/vllm_backend.py),
same API (`transcribe(items, on_text)`), same results.

The model writes `language X<asr_text>` and then the transcript (when a language is forced, the prompt
ends with that prefix and the model writes the transcript only). The service chunks long audio itself
(quiet-point windows) so every item here is one window; the engine only batches.

Transformers: the engine runs the steps of `qwen_asr.Qwen3ASRModel.transcribe` itself — the package's
audio normalization, prompt (`_build_text_prompt`), processor, `generate`, decode and output parsing
(`parse_asr_output`), so the texts and languages are the package's — because it also wants what
`transcribe` drops: the transcript's token ids, each token's log-probability, and the text while it is
being generated (`transcribe(items, on_text=...)`). `QwenASRText` is what both engines share: the
parsing of a window's generated tokens into its result, and the streamer of its text.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

SAMPLE_RATE = 16000
MIN_SAMPLES = SAMPLE_RATE // 2  # the package's minimum input (0.5 s); shorter windows are padded
ASR_TEXT_TAG = "<asr_text>"  # ends the model's language prefix (qwen_asr.inference.utils._ASR_TEXT_TAG)
# qwen_asr.inference.utils.detect_and_fix_repetitions (run by parse_asr_output on every output): a
# character repeated more than REPEAT_THRESHOLD times in a row, or a pattern of at most
# REPEAT_MAX_PATTERN characters repeated REPEAT_THRESHOLD times, is written once. Its defaults.
REPEAT_THRESHOLD = 20
REPEAT_MAX_PATTERN = 20

# on_text(index of the item in the `transcribe` call, piece of its text, the transcript tokens generated
# since the item's previous piece as (token id, log-probability))
OnText = Callable[[int, str, list[tuple[int, float]]], None]


@dataclass
class ASRItem:
    audio: np.ndarray  # float32 mono 16 kHz, one window
    context: str = ""  # becomes the system message (OpenAI `prompt`)
    language: str | None = None  # package language name; None: the model detects it
    # A streamed request's window (set by the service): its text as decoded, and its end. The engine
    # itself takes `on_text` as transcribe's argument; the service routes it to these.
    on_text: Callable[[str, list[tuple[int, float]]], None] | None = None
    on_end: Callable[[], None] | None = None

    @property
    def cost(self) -> float:
        """Seconds of audio: the scheduler batches windows of a similar length (scheduler.SIZE_RATIO)."""
        return len(self.audio) / SAMPLE_RATE


@dataclass
class ASRResult:
    """One window's transcript.

    `tokens` and `logprobs` (same length; transformers backend only, empty lists on vLLM): the generated
    token ids the transcript was decoded from, and the log-probability of each under the decoding used.
    Which tokens: the generated ones after the model's `<asr_text>` token (all generated tokens when the
    language was forced, as the prompt then ends with that prefix; all of them too when the model wrote
    no `<asr_text>`, as the package then takes the whole output for the transcript), leaving out special
    tokens (end of sequence, padding: what decoding with skip_special_tokens drops). So
    `tokenizer.decode(tokens)` is the transcript as generated; `text` is that after the package's
    clean-up (leading/trailing whitespace stripped, a looping repetition written once) and `_printable`.
    Log-probability: greedy decoding, log_softmax of the scores `generate` chose the token from (the
    logits after its logits processors; Qwen3-ASR's generation config has none, so these are the
    model's own next-token log-probabilities) at the chosen token: what transformers'
    `compute_transition_scores(sequences, scores, normalize_logits=True)` gives; always <= 0.
    """

    language: str  # package name, "" when the model gave none
    text: str
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    input_tokens: int = 0  # the row's prompt, text and audio (transformers; 0 on vLLM)
    output_tokens: int = 0  # tokens it generated, language prefix included, end of sequence not


def _is_shown(ch: str) -> bool:
    return ch in "\n\t" or unicodedata.category(ch) != "Cc"


def _printable(text: str) -> str:
    """Drop control characters a decoder can emit (never meaningful in a transcript), trim."""
    return "".join(ch for ch in text if _is_shown(ch)).strip()


class TranscriptStream:
    """One row's `ASRResult.text` while its output is being generated: `feed(raw)` takes the next
    decoded output text and returns the text now certain to come next in the final `text`; `finish(text)`
    returns the rest. The pieces concatenate to `text` exactly (`_printable` included).

    The final text is `_printable` of `qwen_asr.inference.utils.parse_asr_output(raw)`: the raw output
    stripped, its repetitions collapsed (detect_and_fix_repetitions, over the whole output, language
    prefix included), then the part after the first `<asr_text>` (the whole output when the language was
    forced, or when no `<asr_text>` ever comes), stripped. So what is held back until it is certain:
    - the language prefix: nothing before `<asr_text>` is text (an unforced row without one gets all its
      text at `finish`);
    - trailing whitespace (stripped if nothing follows) and leading whitespace (always stripped);
    - the current run of one character beyond its first (more than REPEAT_THRESHOLD of them are written
      once), and whatever could still turn out to be the 2nd..Nth repeat of a pattern of at most
      REPEAT_MAX_PATTERN characters starting earlier: from position i+k on, for every k and i such that
      the text from i is, as far as it is known (up to REPEAT_THRESHOLD*k characters), periodic with
      period k. Ordinary text releases within a few characters (a run like the `ll` of `hello` waits
      for the next character); once a loop is certain the rest of the row waits for `finish`.
    """

    def __init__(self, forced: bool):
        self.forced = forced  # the language was forced: the whole output is text
        self._started = False  # the output's leading whitespace is behind
        self._run_char, self._run_len = "", 0  # the character run being written (only its 1st is in _view)
        self._view = ""  # the output as the repetition fix will see it (runs collapsed), as far as known
        self._released = 0  # _view[:_released] is certain to begin the fixed output
        self._text_start = 0 if forced else -1  # where the text begins in _view (-1: no <asr_text> yet)
        self._read = 0  # _view[:_read] is turned into output (or skipped as the prefix)
        self._text_started = False  # leading whitespace of the text is behind
        self._held = ""  # whitespace that is text only if more text follows
        self.emitted: list[str] = []

    def feed(self, raw: str) -> str:
        for ch in raw:
            if not self._started:
                if ch.isspace():
                    continue
                self._started = True
            if ch == self._run_char:
                self._run_len += 1
                continue
            if 1 < self._run_len <= REPEAT_THRESHOLD:
                self._view += self._run_char * (self._run_len - 1)
            self._view += ch
            self._run_char, self._run_len = ch, 1
        self._release()
        return self._emit(self._text())

    def finish(self, text: str) -> str:
        """The rest of the final `text` (`ASRResult.text`) after what was emitted."""
        done = "".join(self.emitted)
        if not text.startswith(done):  # the holdback above is incomplete: a bug, never a retraction
            from services.runtime.core.logging import get_logger

            get_logger("asr").warning("streamed transcript is not a prefix of the final text")
            return ""
        rest = text[len(done):]
        if rest:
            self.emitted.append(rest)
        return rest

    def _release(self) -> None:
        """Advance _released to the first position that could still be cut by the repetition fix."""
        view, n = self._view, len(self._view)
        m = self._released
        while m < n:
            for k in range(1, REPEAT_MAX_PATTERN + 1):
                i = m - k
                if i < 0:
                    break
                end = min(n, i + REPEAT_THRESHOLD * k)
                if view[i + k:end] == view[i:end - k]:
                    self._released = m
                    return
            m += 1
        self._released = n

    def _text(self) -> str:
        """The released part of the text not yet read."""
        if self._text_start < 0:
            at = self._view.find(ASR_TEXT_TAG, max(0, self._read - len(ASR_TEXT_TAG) + 1), self._released)
            if at < 0:
                self._read = self._released
                return ""
            self._text_start = self._read = at + len(ASR_TEXT_TAG)
        if self._released <= self._read:
            return ""
        new, self._read = self._view[self._read:self._released], self._released
        return new

    def _emit(self, new: str) -> str:
        out = []
        for ch in new:
            if not _is_shown(ch):
                continue
            if not self._text_started:
                if ch.isspace():
                    continue
                self._text_started = True
            if ch.isspace():
                self._held += ch
                continue
            out.append(self._held + ch)
            self._held = ""
        piece = "".join(out)
        if piece:
            self.emitted.append(piece)
        return piece


class ASREngine(Protocol):
    backend: str

    def transcribe(self, items: Sequence[ASRItem], on_text: OnText | None = None) -> list[ASRResult]: ...


def allow_concurrent_calls(model) -> None:
    """Let two `transcribe` calls run at once on one qwen_asr model (the scheduler runs a short request
    beside a long one's batch): the thinker's `rope_deltas` becomes per-thread, and the tokenizer (whose
    padding state a fast tokenizer changes per call) is called one at a time. Feature extraction stays
    parallel: holding a lock over a long batch's mel spectrograms would make the short request wait for
    them. Refuses a package whose thinker no longer holds rope_deltas where we expect it, rather than run
    unguarded."""
    from services.runtime.serving.concurrent_calls import Serialized, thread_local_attributes

    if thread_local_attributes(model.model, ["rope_deltas"]) < 1:
        raise RuntimeError("qwen_asr: no module holds rope_deltas; check concurrent calls before upgrading")
    processor = model.processor
    processor.tokenizer = Serialized(processor.tokenizer, ("__call__", "batch_decode", "decode", "encode"))


class QwenASRText:
    """What both engines do with Qwen3-ASR's tokenizer (`self.tokenizer`): a window's result from its
    generated tokens (the package's output parsing, the transcript's tokens and log-probabilities), the
    streamer that hands text and tokens out as they come, and the token helpers the service uses."""

    tokenizer = None  # set by the engine (thread-safe: runtime.serving.concurrent_calls.Serialized)

    def _read_special_tokens(self) -> None:
        # Read once: tokenizer calls outside the lock could meet another call's padding change.
        tokenizer = self.tokenizer
        self._special = frozenset(i for i, t in tokenizer.added_tokens_decoder.items() if t.special)
        self._tag_id = tokenizer.convert_tokens_to_ids(ASR_TEXT_TAG)

    def steps(self, rows_forced: list[bool], streamed: bool, on_text) -> "_Steps":
        """A recorder of `rows_forced`'s generated tokens (a row whose language was forced is all text), and
        of their text as it comes when `streamed`: on_text(row, piece, tokens)."""
        streams = [TranscriptStream(forced=f) for f in rows_forced] if streamed else None
        return _Steps(self.tokenizer, streams, on_text, forced=list(rows_forced), special=self._special,
                      tag_id=self._tag_id)

    def row_result(self, steps: "_Steps", row: int, ids: list[int], raw: str, language: str | None,
                   input_tokens: int, emit=None) -> ASRResult:
        """One window's result from its generated `ids` (their log-probabilities recorded by `steps`) and
        their decoded text `raw`, with the package's parsing (`language`: the forced one, or None); when
        streamed, `emit(piece, tokens)` gets what the stream held back."""
        from qwen_asr.inference.utils import merge_languages, parse_asr_output

        lang, text = parse_asr_output(raw, user_language=language)
        logprobs = steps.logprobs[row]
        if len(logprobs) != len(ids):
            raise RuntimeError("qwen_asr: the generated tokens and their log-probabilities disagree")
        start = 0 if language is not None else _text_start(ids, raw, self._tag_id, self.tokenizer)
        kept = [(t, lp) for t, lp in zip(ids[start:], logprobs[start:]) if t not in self._special]
        result = ASRResult(language=merge_languages([lang]), text=_printable(text),
                           tokens=[t for t, _ in kept], logprobs=[lp for _, lp in kept], input_tokens=input_tokens,
                           output_tokens=sum(1 for t in ids if t not in self._special))
        if steps.streams is not None and emit is not None:
            rest = steps.streams[row].finish(result.text)
            left = list(zip(result.tokens, result.logprobs))[steps.handed[row]:]
            if rest or left:
                emit(rest, left)
        return result

    def token_ends(self, tokens: list[int], text: str) -> list[int]:
        """Where each of a window's `tokens` (ASRResult.tokens) ends in its `text`: the length of the
        decoded prefix up to and including it, less the leading whitespace `text` lost, kept monotonic
        and inside `text` (a multi-byte character split over tokens ends with its last token). Past a
        repetition the package collapsed, the offsets are approximate. One decode per token."""
        tokenizer = self.tokenizer
        decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)  # noqa: E731
        full = decode(tokens)
        lead = len(full) - len(full.lstrip())
        ends, last = [], 0
        for k in range(len(tokens)):
            prefix = decode(tokens[: k + 1])
            end = len(prefix.rstrip("\ufffd")) - lead  # an incomplete character is not there yet
            last = min(max(last, end), len(text))
            ends.append(last)
        if ends:
            ends[-1] = len(text)  # the last token closes the text (even on a character it left incomplete)
        return ends

    def token_bytes(self, tokens: list[int]) -> list[bytes]:
        """Each token's own bytes (a byte-level BPE token may hold part of a character: its bytes, not a
        decoded string, say exactly what it contributed)."""
        from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

        byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
        pieces = self.tokenizer.convert_ids_to_tokens(tokens)
        return [bytes(byte_of[ch] for ch in piece if ch in byte_of) for piece in pieces]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))


def forced_language(language: str | None) -> str | None:
    """The package's name of a forced language (validated by the package), None when not forced."""
    from qwen_asr.inference.utils import normalize_language_name, validate_language

    if language is None or str(language).strip() == "":
        return None
    lang = normalize_language_name(str(language))
    validate_language(lang)
    return lang


class QwenASREngine(QwenASRText):
    """Qwen3-ASR in this process (transformers, any device)."""

    backend = "transformers"

    def __init__(self, model):
        self.model = model  # qwen_asr.Qwen3ASRModel
        self.tokenizer = model.processor.tokenizer
        self._read_special_tokens()

    @classmethod
    def load(cls, path: str, *, device: str, dtype: str, max_new_tokens: int,
             threads: int | None = None) -> "QwenASREngine":
        import torch
        from qwen_asr import Qwen3ASRModel

        from services.runtime.serving.device import torch_dtype
        from services.runtime.serving.encoder_attention import require_windowed_audio_attention

        if threads:
            torch.set_num_threads(threads)
        model = Qwen3ASRModel.from_pretrained(path, dtype=torch_dtype(dtype), device_map=device,
                                              max_new_tokens=max_new_tokens, max_inference_batch_size=32)
        require_windowed_audio_attention(model.model)
        allow_concurrent_calls(model)
        return cls(model)

    def transcribe(self, items: Sequence[ASRItem], on_text: OnText | None = None) -> list[ASRResult]:
        """One result per item, in order.

        on_text(index, piece, tokens): the text of item `index` as it is generated, called from the thread
        running this call; the pieces of an item concatenate to its `ASRResult.text` exactly. Pieces
        come while `generate` runs, each holding only text certain to stay (TranscriptStream says what
        waits: the language prefix, surrounding whitespace, possible repetition loops); after `generate`
        each item gets the rest in one last piece. `tokens`: the transcript tokens (ASRResult.tokens, with
        their log-probabilities) generated since the item's previous piece, so the calls' tokens
        concatenate to `tokens`/`logprobs` exactly; the last call may have text "" to hand over tokens
        whose text was held back and dropped (trailing whitespace). No call when nothing is left. An
        exception raised by on_text ends the call. (The vLLM engine keeps the same contract.)
        """
        if not items:
            return []
        return self._transcribe_transformers([padded(it.audio) for it in items], items, on_text)

    def _transcribe_transformers(self, audios, items: Sequence[ASRItem], on_text: OnText | None) -> list[ASRResult]:
        """`Qwen3ASRModel.transcribe` (qwen_asr 0.0.6) for windows within its limit, step by step: its
        audio normalization, language validation, prompts, sub-batches of max_inference_batch_size,
        processor, generate, decode and parsing — with a streamer that records each step's tokens and
        log-probabilities and streams the text."""
        import torch
        from qwen_asr.inference.utils import MAX_ASR_INPUT_SECONDS, normalize_audios
        from transformers import LogitsProcessorList

        asr = self.model
        wavs = normalize_audios(audios)
        if any(len(w) > MAX_ASR_INPUT_SECONDS * SAMPLE_RATE for w in wavs):
            # The package would cut it in pieces and join their texts; the service's windows never are this long.
            raise ValueError(f"an ASR window is longer than {MAX_ASR_INPUT_SECONDS} s")
        langs = [forced_language(it.language) for it in items]
        prompts = [asr._build_text_prompt(context=it.context, force_language=lang) for it, lang in zip(items, langs)]

        results: list[ASRResult] = []
        size = asr.max_inference_batch_size if asr.max_inference_batch_size and asr.max_inference_batch_size > 0 \
            else len(prompts)
        for lo in range(0, len(prompts), size):
            hi = min(lo + size, len(prompts))
            steps = self.steps([lang is not None for lang in langs[lo:hi]], on_text is not None,
                               lambda row, piece, tokens, lo=lo: on_text(lo + row, piece, tokens))
            with torch.no_grad():
                inputs = asr.processor(text=prompts[lo:hi], audio=wavs[lo:hi], return_tensors="pt", padding=True)
                inputs = inputs.to(asr.model.device).to(asr.model.dtype)
                out = asr.model.generate(**inputs, max_new_tokens=asr.max_new_tokens, streamer=steps,
                                         logits_processor=LogitsProcessorList([steps]))
            generated = out.sequences[:, inputs["input_ids"].shape[1]:]
            decoded = asr.processor.batch_decode(generated, skip_special_tokens=True,
                                                 clean_up_tokenization_spaces=False)
            for row, raw in enumerate(decoded):
                emit = (lambda piece, tokens, i=lo + row: on_text(i, piece, tokens)) if on_text else None
                results.append(self.row_result(steps, row, generated[row].tolist(), raw, langs[lo + row],
                                               int(inputs["attention_mask"][row].sum()), emit))
        return results

    def warmup(self) -> None:
        self.transcribe([ASRItem(np.zeros(SAMPLE_RATE, dtype=np.float32))])


def padded(audio: np.ndarray) -> tuple[np.ndarray, int]:
    """A window as the package takes it: (samples, rate), padded to its 0.5-s minimum."""
    return np.pad(audio, (0, max(0, MIN_SAMPLES - len(audio)))), SAMPLE_RATE


def _text_start(ids: list[int], raw: str, tag_id: int, tokenizer) -> int:
    """Index in `ids` (one row's generated tokens, language not forced) of the first transcript token:
    after the first `<asr_text>` token; 0 when the output has no `<asr_text>` (all of it is text). If the
    model spelled `<asr_text>` out of other tokens, after the token that completes it."""
    if tag_id in ids:
        return ids.index(tag_id) + 1
    if ASR_TEXT_TAG not in raw:
        return 0
    for j in range(1, len(ids) + 1):
        if ASR_TEXT_TAG in tokenizer.decode(ids[:j], skip_special_tokens=True, clean_up_tokenization_spaces=False):
            return j
    return 0


class _Steps:
    """Fed by `generate` as its streamer (`put`, `end`) and as its last logits processor (`__call__`,
    run after generate's own): records each step's chosen token of every row with its log-probability
    under the scores it was chosen from (the step's processed scores; greedy picks their argmax). When
    `streams` is given, also decodes each row as it grows and passes its certain text to `on_text`, with
    the row's transcript tokens since its previous piece (non-special tokens after its first `<asr_text>`,
    or all of them when the language was `forced`); `handed[row]`: how many of those went out so far.
    Only one step's scores are kept: `output_scores=True` would keep all of them, batch x vocabulary
    (151,936) x steps floats (~10 GB for 32 windows of 512 tokens)."""

    def __init__(self, tokenizer, streams: list[TranscriptStream] | None,
                 on_text: Callable[[int, str, list[tuple[int, float]]], None], *, forced: list[bool] = (),
                 special: frozenset = frozenset(), tag_id: int | None = None):
        self.tokenizer = tokenizer
        self.streams = streams
        self.on_text = on_text
        self._in_text = list(forced)  # per row: its transcript tokens have begun
        self._special, self._tag_id = special, tag_id
        self._text_tokens: list[list[tuple[int, float]]] = []
        self.handed: list[int] = []
        self._scores = None
        self.logprobs: list[list[float]] = []
        self._ids: list[list[int]] = []
        self._undecoded: list[int] = []  # per row: index in _ids of the first token not yet decoded

    def __call__(self, input_ids, scores):
        self._scores = scores
        return scores

    def end(self) -> None:
        pass

    def put(self, value) -> None:
        import torch

        if value.dim() == 2:  # generate first passes the prompt
            self.begin(value.shape[0])
            return
        scores = self._scores
        chosen = torch.log_softmax(scores, dim=-1).gather(1, value.to(scores.device)[:, None])[:, 0]
        for row, (token, lp) in enumerate(zip(value.tolist(), chosen.tolist())):
            self.add(row, token, lp)
        if self.streams is not None:
            self.decode()

    def begin(self, rows: int) -> None:
        self.logprobs = [[] for _ in range(rows)]
        self._ids = [[] for _ in range(rows)]
        self._undecoded = [0] * rows
        self._in_text = (self._in_text + [False] * rows)[:rows]
        self._text_tokens = [[] for _ in range(rows)]
        self.handed = [0] * rows

    def add(self, row: int, token: int, lp: float) -> None:
        """One generated token of `row` with its log-probability."""
        self._ids[row].append(token)
        self.logprobs[row].append(lp)
        if self._in_text[row]:
            if token not in self._special:
                self._text_tokens[row].append((token, lp))
        elif token == self._tag_id:
            self._in_text[row] = True

    def ids(self, row: int) -> list[int]:
        return self._ids[row]

    def decode(self) -> None:
        """Feed each row's text since its last decoded token to its stream; a row whose new text ends in
        an incomplete character (U+FFFD) waits for the next token."""
        rows = range(len(self._ids))
        pieces = self.tokenizer.batch_decode([self._ids[r][self._undecoded[r]:] for r in rows],
                                             skip_special_tokens=True, clean_up_tokenization_spaces=False)
        for r, piece in zip(rows, pieces):
            if piece.endswith("\ufffd"):
                continue
            self._undecoded[r] = len(self._ids[r])
            if piece:
                out = self.streams[r].feed(piece)
                if out:
                    tokens = self._text_tokens[r][self.handed[r]:]
                    self.handed[r] = len(self._text_tokens[r])
                    self.on_text(r, out, tokens)
