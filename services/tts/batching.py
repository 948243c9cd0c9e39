"""Continuous batching for the Qwen3-TTS talker at frame granularity: our step loop, the package's networks.

`qwen_tts`'s `generate()` runs a fixed batch to its longest item, so a request that arrives while it runs
waits for all of it. Here every request — streamed or not — joins the running batch at the next step:

* Prompt: the package builds it (`Qwen3TTSForConditionalGeneration.generate` up to the point where it
  calls `talker.generate`, which is intercepted to capture the prompt embeddings), so speaker, language,
  dialect and instructions are encoded exactly as the package does.
* Prefill: one forward of the talker over the new request's prompt, with its own KV cache, then the cache
  joins the batch's: rows are right-aligned (left padding, masked), so one batched forward serves every
  row whatever its length; a row that leaves is dropped and the common left padding trimmed.
* Step (the body of the talker's forward, written out because `generate()` cannot be driven a step at a
  time): the code predictor (its forward in a loop with one cache: what the package's
  `code_predictor.generate` call gives) completes every row's frame from its first code and the
  talker's last hidden state; the frame's embeddings are summed
  (+ the tts pad embedding: non-streaming text mode, the text is all in the prompt) and fed to the talker
  with each row's own rotary position; its logits give each row's next first code.
* Sampling of the first code follows transformers' order for the arguments the package passes:
  repetition penalty over the row's own earlier first codes, EOS suppressed for the first 2 codes
  (`min_new_tokens=2`), the codec's control tokens suppressed, then temperature, top-k, top-p. Greedy when
  `do_sample` is false. One set of sampling values per engine (OpenAI's speech API has no knobs); the
  code predictor samples with the sub-talker values, the same warpers, all rows at once.
* A row ends on EOS ("stop"), at its frame cap ("length": the known runaway of Qwen3-TTS, reported, never
  silent), or when its request is cancelled (client gone) — checked every step, so the slot is free
  within one step.

Memory: no per-step hidden states are kept (the package keeps all layers' for every step); the KV cache
holds batch x longest row tokens, bounded by the admission budget (`max_tokens`: rows x their prompt +
frame cap).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

STOP, LENGTH, CANCELLED = "stop", "length", "cancelled"


class _Captured(Exception):
    def __init__(self, kwargs: dict):
        self.kwargs = kwargs


@dataclass
class Row:
    """One request in the loop. `on_frame(frame)` and `on_end(reason, error)` are called from the loop
    thread: they must be quick (hand the data to another thread or queue)."""

    prompt: Any  # (1, P, H) prompt embeddings
    pad_embed: Any  # (1, 1, H)
    max_frames: int
    on_frame: Callable[[Any], None]
    on_end: Callable[[str, BaseException | None], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    frames: int = 0
    length: int = 0  # real tokens in the KV cache
    code0: int = -1  # next first code to feed
    sampled: int = 0  # first codes sampled so far (min_new_tokens)
    seen: Any = None  # (V,) bool: first codes already sampled (repetition penalty)
    hidden: Any = None  # (1, 1, H) the talker's last hidden state

    @property
    def cost(self) -> int:
        return self.prompt.shape[1] + self.max_frames


class Preparing:
    """One request counted as preparing by its loop until `release()` (idempotent; also on `with` exit)."""

    def __init__(self, loop: "TalkerLoop"):
        self._loop = loop
        self._released = False
        with loop._cond:
            loop._preparing += 1

    def release(self) -> None:
        with self._loop._cond:
            if self._released:
                return
            self._released = True
            self._loop._preparing -= 1
            self._loop._cond.notify()

    def __enter__(self) -> "Preparing":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class TalkerLoop:
    """The decode loop of one TTS engine; one thread runs it, `submit` may be called from any thread."""

    def __init__(self, tts, sampling: dict, *, max_batch_size: int, max_tokens: int, gather_seconds: float = 0.0):
        import torch

        self.torch = torch
        self.tts = tts
        self.model = tts.model
        self.talker = tts.model.talker
        cfg = tts.model.config.talker_config
        self.eos = int(cfg.codec_eos_token_id)
        self.vocab = int(cfg.vocab_size)
        self.groups = int(cfg.num_code_groups)
        self.sampling = dict(sampling)
        self.max_batch_size = int(max_batch_size)
        self.max_tokens = int(max_tokens)
        # An idle loop waits (at most this long) for requests still building their prompts, so requests
        # that arrive together start together: a row stepping alone would hold the others' join back by a
        # step and contend with their prompt building (GIL), which cost the 8th of 8 simultaneous streams
        # more than twice its first-audio time alone.
        self.gather_seconds = float(gather_seconds)
        self._preparing = 0
        self.device = next(self.talker.parameters()).device
        suppressed = [i for i in range(self.vocab - 1024, self.vocab) if i != self.eos]
        self._suppress = torch.zeros(self.vocab, dtype=torch.bool, device=self.device)
        self._suppress[suppressed] = True
        self._waiting: list[Row] = []
        self._rows: list[Row] = []
        self._cache = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.steps = 0  # batched steps run (a metric for tests and benches)
        self.on_step: Callable[[int], None] | None = None  # rows of each step (the service's metric)
        self.step_rows = 0  # sum of rows over steps: mean batch = step_rows / steps

    # -- public -----------------------------------------------------------------------------------------
    def prompt(self, text: str, voice: str, language: str, instructions: str | None):
        """(prompt embeddings (1, P, H), pad embedding (1, 1, H)) exactly as the package builds them."""
        tts = self.tts
        input_ids = tts._tokenize_texts([tts._build_assistant_text(text)])
        instruct = [tts._tokenize_texts([tts._build_instruct_text(instructions)])[0] if instructions else None]

        def capture(**kwargs):
            raise _Captured(kwargs)

        self.talker.generate = capture  # an instance attribute shadows the method for this call only
        try:
            self.model.generate(input_ids=input_ids, instruct_ids=instruct, languages=[language],
                                speakers=[voice], non_streaming_mode=True, max_new_tokens=2, **self.sampling)
        except _Captured as got:
            kw = got.kwargs
        else:  # pragma: no cover - the package changed its generate
            raise RuntimeError("qwen_tts generate did not reach talker.generate")
        finally:
            del self.talker.generate
        if kw["trailing_text_hidden"].shape[1] != 1:  # pragma: no cover - guards the non-streaming text mode
            raise RuntimeError("expected the non-streaming text mode (all text in the prompt)")
        return kw["inputs_embeds"], kw["tts_pad_embed"]

    def preparing(self) -> "Preparing":
        """Count a request as building its prompt from now until the returned object is released (or its
        `with` block ends): an idle loop gathers such requests."""
        return Preparing(self)

    def fits(self, row: Row) -> bool:
        return row.cost <= self.max_tokens

    def submit(self, row: Row) -> None:
        if not self.fits(row):
            raise ValueError(f"request needs {row.cost} tokens; the loop's budget is {self.max_tokens}")
        with self._cond:
            if self._closed:
                raise RuntimeError("the TTS loop is closed")
            self._waiting.append(row)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tts-loop", daemon=True)
                self._thread.start()
            self._cond.notify()

    @property
    def active(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    # -- the loop -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        torch = self.torch
        while True:
            with self._cond:
                while not self._waiting and not self._rows and not self._closed:
                    self._cond.wait()
                if self._closed:
                    for r in self._waiting + self._rows:
                        r.on_end(CANCELLED, None)
                    return
                joining = self._admit()
            try:
                with torch.inference_mode():
                    for row in joining:
                        self._prefill(row)
                    if self._rows:
                        self._step()
            except BaseException as exc:  # noqa: BLE001 - every row in flight fails with it; the loop goes on
                for r in self._rows + [r for r in joining if r not in self._rows]:
                    r.on_end(STOP, exc)
                self._rows, self._cache = [], None

    def _admit(self) -> list[Row]:
        """Waiting rows that fit now (batch size and token budget), in arrival order; cancelled ones end.
        Called holding the condition; an idle loop first waits for requests still preparing (bounded)."""
        if not self._rows and self._waiting and self._preparing and self.gather_seconds > 0:
            deadline = time.monotonic() + self.gather_seconds
            while (self._preparing and not self._closed and len(self._waiting) < self.max_batch_size
                   and (left := deadline - time.monotonic()) > 0):
                self._cond.wait(left)
        joining: list[Row] = []
        rows = list(self._rows)
        for row in list(self._waiting):
            if row.cancel.is_set():
                self._waiting.remove(row)
                row.on_end(CANCELLED, None)
                continue
            if len(rows) >= self.max_batch_size:
                break
            longest = max([r.cost for r in rows] + [row.cost])
            if (len(rows) + 1) * longest > self.max_tokens:
                break  # arrival order: a big request is not overtaken for ever by small ones
            self._waiting.remove(row)
            rows.append(row)
            joining.append(row)
        return joining

    def _prefill(self, row: Row) -> None:
        from transformers import DynamicCache

        torch = self.torch
        emb = row.prompt.to(self.device)
        p = emb.shape[1]
        cache = DynamicCache()
        pos = torch.arange(p, device=self.device).view(1, 1, -1).expand(3, 1, -1)
        out = self.talker.model(inputs_embeds=emb, attention_mask=torch.ones(1, p, dtype=torch.long, device=self.device),
                                position_ids=pos, past_key_values=cache, use_cache=True,
                                cache_position=torch.arange(p, device=self.device))
        hidden = out.last_hidden_state[:, -1:]
        row.length = p
        row.hidden = hidden
        row.seen = torch.zeros(self.vocab, dtype=torch.bool, device=self.device)
        row.code0 = int(self._sample(self.talker.codec_head(hidden)[:, -1], [row])[0])
        self._join(row, cache)
        if row.code0 == self.eos:  # pragma: no cover - EOS is suppressed for the first two codes
            self._leave([row], STOP)

    def _step(self) -> None:
        torch = self.torch
        rows = self._rows
        talker = self.talker
        code0 = torch.tensor([[r.code0] for r in rows], device=self.device)
        first = talker.get_input_embeddings()(code0)  # (B, 1, H)
        past = torch.cat([r.hidden for r in rows], dim=0)
        predicted = self._predict(torch.cat((past, first), dim=1))  # (B, groups - 1)
        frames = torch.cat((code0, predicted), dim=-1)
        ended: list[tuple[Row, str]] = []
        for i, r in enumerate(rows):
            r.frames += 1
            r.on_frame(frames[i].detach().clone())
            if r.cancel.is_set():
                ended.append((r, CANCELLED))
            elif r.frames >= r.max_frames:
                ended.append((r, LENGTH))
        embeds = [first] + [talker.code_predictor.get_input_embeddings()[i](predicted[:, i : i + 1])
                            for i in range(self.groups - 1)]
        step_in = torch.cat(embeds, dim=1).sum(1, keepdim=True) + torch.cat([r.pad_embed for r in rows], dim=0)
        gone_ids = {id(r) for r, _ in ended}
        keep = [i for i, r in enumerate(rows) if id(r) not in gone_ids]
        for reason in (CANCELLED, LENGTH):
            gone = [r for r, why in ended if why == reason]
            if gone:
                self._leave(gone, reason)
        if not keep:
            return
        step_in = step_in[keep]
        rows = self._rows
        self.steps += 1
        self.step_rows += len(rows)
        if self.on_step is not None:
            self.on_step(len(rows))
        total = self._cache.get_seq_length()
        pads = torch.tensor([total - r.length for r in rows], device=self.device)
        mask = (torch.arange(total + 1, device=self.device).view(1, -1) >= pads.view(-1, 1)).long()
        pos = torch.tensor([r.length for r in rows], device=self.device).view(1, -1, 1).expand(3, -1, -1)
        out = talker.model(inputs_embeds=step_in, attention_mask=mask, position_ids=pos,
                           past_key_values=self._cache, use_cache=True,
                           cache_position=torch.tensor([total], device=self.device))
        hidden = out.last_hidden_state
        nxt = self._sample(talker.codec_head(hidden)[:, -1], rows)
        stopped = []
        for i, r in enumerate(rows):
            r.length += 1
            r.hidden = hidden[i : i + 1]
            r.code0 = int(nxt[i])
            if r.code0 == self.eos:
                stopped.append(r)
        if stopped:
            self._leave(stopped, STOP)

    def _predict(self, prefix):
        """The code predictor's codes 1..15 of every row's frame: what `code_predictor.generate(prefix,
        max_new_tokens=15, ...)` gives (the package's call), as a plain loop over its forward with one
        cache: prefill on [last hidden, first code], then one code per step; the forward picks each step's
        embedding table and head itself (`generation_steps`). Saves generate's per-call setup, which cost
        most of a talker step on a small model."""
        from transformers import DynamicCache

        torch = self.torch
        s = self.sampling
        cp = self.talker.code_predictor
        cache = DynamicCache()
        out = cp(inputs_embeds=prefix, past_key_values=cache, use_cache=True)
        codes = []
        for _ in range(self.groups - 1):
            code = _pick(torch, out.logits[:, -1].float(), s["subtalker_dosample"], s["subtalker_temperature"],
                         s["subtalker_top_k"], s["subtalker_top_p"])
            codes.append(code)
            if len(codes) == self.groups - 1:
                break
            out = cp(input_ids=code[:, None], past_key_values=cache, use_cache=True,
                     generation_steps=out.generation_steps)
        return torch.stack(codes, dim=1)

    def _sample(self, logits, rows: list[Row]):
        """Next first code per row: transformers' processors for the package's arguments, in its order."""
        torch = self.torch
        s = self.sampling
        scores = logits.float()
        seen = torch.stack([r.seen for r in rows])
        penalty = float(s.get("repetition_penalty") or 1.0)
        if penalty != 1.0:
            scores = torch.where(seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)
        young = torch.tensor([r.sampled < 2 for r in rows], device=scores.device)
        scores[young, self.eos] = -float("inf")
        scores = scores.masked_fill(self._suppress, -float("inf"))
        codes = _pick(torch, scores, s.get("do_sample"), s.get("temperature"), s.get("top_k"), s.get("top_p"))
        for r, c in zip(rows, codes.tolist()):
            r.sampled += 1
            r.seen[c] = True
        return codes

    # -- the batch's KV cache ------------------------------------------------------------------------------
    def _join(self, row: Row, cache) -> None:
        """Right-align the new row's cache with the batch's (left padding) and stack it as a new row."""
        torch = self.torch
        if self._cache is None:
            self._cache, self._rows = cache, [row]
            return
        total, p = self._cache.get_seq_length(), cache.get_seq_length()
        width = max(total, p)
        for mine, theirs in zip(self._cache.layers, cache.layers):
            for name in ("keys", "values"):
                a, b = getattr(mine, name), getattr(theirs, name)
                a = _left_pad(torch, a, width - total)
                b = _left_pad(torch, b, width - p)
                setattr(mine, name, torch.cat((a, b), dim=0))
        self._rows.append(row)

    def _leave(self, gone: list[Row], reason: str) -> None:
        torch = self.torch
        keep = [i for i, r in enumerate(self._rows) if all(r is not g for g in gone)]
        for r in gone:
            r.on_end(reason, None)
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._cache = None
            return
        idx = torch.tensor(keep, device=self.device)
        total = self._cache.get_seq_length()
        trim = total - max(r.length for r in self._rows)  # columns that are padding in every row left
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, idx)[:, :, trim:]
            layer.values = layer.values.index_select(0, idx)[:, :, trim:]


def _pick(torch, scores, do_sample, temperature, top_k, top_p):
    """One code per row from processed scores: transformers' warpers in its order (temperature, top-k,
    top-p) and a multinomial draw, or argmax when not sampling."""
    if not do_sample:
        return scores.argmax(-1)
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    if temperature is not None and temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k=top_k)(None, scores)
    if top_p is not None and top_p < 1.0:
        scores = TopPLogitsWarper(top_p=top_p)(None, scores)
    return torch.multinomial(torch.softmax(scores, dim=-1), 1).squeeze(1)


def _left_pad(torch, t, n: int):
    if n <= 0:
        return t
    shape = list(t.shape)
    shape[2] = n
    return torch.cat((t.new_zeros(shape), t), dim=2)
