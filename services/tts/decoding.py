"""The codec side of the TTS loop: frames -> audio for every request, batched across requests, in its own
thread so that the talker's next step and the codec's decoding overlap.

Each request is a `Job`. The talker loop (services.tts.batching) hands over its frames as they are made
and its end; this worker turns them into audio:

* streamed jobs: the first chunk after `first` frames, then every `chunk` frames (more when decoding lags:
  whatever has arrived is decoded together). A span of frames [a, b) is decoded with exact left context
  (services.tts.codec.decode_windows: the package's chunked_decode windows, `context` frames back). The
  spans due in one round, from every job, go through ONE decoder call: windows are right-padded to the
  longest; the decoder is causal (causal convolutions, causal attention, right-trimmed transposed
  convolutions), so padding after a window never reaches its samples.
* whole jobs (not streamed): decoded at their end by the package's own decode (`speech_tokenizer.decode`),
  every job that ended in the same round in one call.

`Job.emit(audio)` receives float32 chunks (streamed) or the whole audio; `Job.done(reason, error, frames)`
is called once, last. Both run on this worker's thread: they must only hand the data on.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .codec import decode_windows

_END = object()


@dataclass(eq=False)
class Job:
    emit: Callable[[np.ndarray], None]
    done: Callable[[str, BaseException | None, int], None]
    stream: bool
    first: int = 2
    chunk: int = 6
    context: int | None = None  # left context frames of a streamed span (None: the package window's start)
    cancel: threading.Event = field(default_factory=threading.Event)  # shared with the talker's row
    frames: list = field(default_factory=list)
    emitted: int = 0
    finished: bool = False


class CodecWorker:
    def __init__(self, speech_tokenizer, *, chunk_size: int, left_context: int):
        import torch

        self.torch = torch
        self.tokenizer = speech_tokenizer
        self.decoder = speech_tokenizer.model.decoder
        self.device = next(self.decoder.parameters()).device
        self.samples_per_frame = int(speech_tokenizer.get_decode_upsample_rate())
        self.chunk_size, self.left_context = chunk_size, left_context
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self.calls = 0  # decoder calls for streamed spans, and the spans they held (bench/tests)
        self.spans = 0
        threading.Thread(target=self._run, name="tts-codec", daemon=True).start()

    # called from the talker loop's thread
    def frame(self, job: Job, frame) -> None:
        self._q.put((job, frame))

    def end(self, job: Job, reason: str, error: BaseException | None) -> None:
        self._q.put((job, (_END, reason, error)))

    def _run(self) -> None:
        while True:
            got = [self._q.get()]
            while True:  # take whatever else has arrived: decode it together
                try:
                    got.append(self._q.get_nowait())
                except queue.Empty:
                    break
            ended: dict[Job, tuple[str, BaseException | None]] = {}
            touched: list[Job] = []
            for job, x in got:
                if job.finished:
                    continue
                if isinstance(x, tuple) and x and x[0] is _END:
                    ended[job] = (x[1], x[2])
                else:
                    job.frames.append(x)
                if job not in touched:
                    touched.append(job)
            try:
                with self.torch.inference_mode():
                    self._stream_round([j for j in touched if j.stream], ended)
                    self._whole_round([j for j in touched if not j.stream and j in ended and ended[j][1] is None])
            except BaseException as exc:  # noqa: BLE001 - the jobs of this round fail with it
                for job in touched:
                    job.cancel.set()  # the talker drops its row at the next step
                    ended[job] = ("stop", exc)
            for job, (reason, error) in ended.items():
                job.finished = True
                job.done(reason, error, len(job.frames))

    def _stream_round(self, jobs: list[Job], ended: dict) -> None:
        spans = []
        for job in jobs:
            pending = len(job.frames) - job.emitted
            need = job.first if job.emitted == 0 else job.chunk
            if pending and (pending >= need or job in ended):
                spans.append((job, job.emitted, len(job.frames)))
        if not spans:
            return
        windows = [(job, w) for job, a, b in spans
                   for w in decode_windows(a, b, job.context, self.chunk_size, self.left_context)]
        audio = self._decode_windows([(job.frames, w) for job, w in windows])
        pieces: dict[Job, list[np.ndarray]] = {}
        for (job, _), wav in zip(windows, audio):
            pieces.setdefault(job, []).append(wav)
        for job, a, b in spans:
            job.emitted = b
            job.emit(np.ascontiguousarray(np.concatenate(pieces[job]), dtype=np.float32))
        self.calls += 1
        self.spans += len(spans)

    def _decode_windows(self, windows: list[tuple[list, tuple[int, int, int]]]) -> list[np.ndarray]:
        """One decoder call for every window (start, first, end): the samples of frames [first, end)."""
        torch = self.torch
        spf = self.samples_per_frame
        longest = max(end - start for _, (start, _, end) in windows)
        batch = torch.zeros(len(windows), len(windows[0][0][0]), longest, dtype=torch.long, device=self.device)
        for i, (frames, (start, _, end)) in enumerate(windows):
            batch[i, :, : end - start] = torch.stack(frames[start:end]).to(self.device).clamp(min=0).T
        wav = self.decoder(batch)[:, 0]
        return [wav[i, (first - start) * spf : (end - start) * spf].float().cpu().numpy()
                for i, (_, (start, first, end)) in enumerate(windows)]

    def _whole_round(self, jobs: list[Job]) -> None:
        jobs = [j for j in jobs if j.frames]
        if not jobs:
            return
        codes = [self.torch.stack(j.frames) for j in jobs]
        wavs, _ = self.tokenizer.decode([{"audio_codes": c} for c in codes])
        for job, wav in zip(jobs, wavs):
            job.emit(np.ascontiguousarray(wav, dtype=np.float32))

