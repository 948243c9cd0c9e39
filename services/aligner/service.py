"""The aligner model service: owns the model, its admission queue and batching; no HTTP wire format.

The gateway decodes the audio once and calls `align(audio, AlignLines)` (lyrics) or `align_spans(audio,
AlignSpans)` (an ASR transcript, window by window; services/aligner/contract.py). Here: language (given or
detected), units per line, long audio split into windows the aligner can time (where no voice is heard,
at the quietest such point), the chunks of all concurrent requests batched through one scheduler, lines
rebuilt with global offsets.
"""

from __future__ import annotations

import asyncio

import bentoml
import numpy as np

from services.runtime.codecs.chunking import frame_rms, plan_chunks
from services.runtime.core.errors import InvalidRequest, Unprocessable
from services.runtime.core.languages import ALIGNER as LANGUAGES
from services.runtime.serving import vad
from services.runtime.serving.modelservice import ModelService, resources, thread_envs, traffic
from services.runtime.serving.scheduler import Scheduler
from services.runtime.edge.remote import guarded
from services.runtime.core.settings import get_settings

from . import lyrics, review
from .contract import EMPTY_LYRICS, AlignLines, Alignment, AlignSpans, check_audio, check_lyrics
from .engine import SAMPLE_RATE, AlignJob, QwenForcedAlignerEngine, UnitTime
from .separation import VocalSeparator

_CFG = get_settings().aligner


@bentoml.service(
    name="aligner",
    traffic=traffic(_CFG),
    # 0.6B: ~1.2 GB bf16, 2.4 GB peak with a 120 s window: the smallest GPU class is plenty.
    resources=resources("2", "4Gi", gpu=1, gpu_type="nvidia-tesla-t4"),
    envs=thread_envs(),
)
class Aligner(ModelService[QwenForcedAlignerEngine]):
    key = "aligner"
    separator: VocalSeparator | None = None

    def __init__(self) -> None:
        super().__init__()
        # Separation has its own queue and slots: an alignment never waits behind a song being separated.
        self.separations = Scheduler(
            "separator", self.cfg.separator, self._run_separation, max_batch_size=1,
            max_concurrency=self.cfg.separator_concurrency, max_queue=self.cfg.max_queue, timeout=self.cfg.timeout,
        ) if self.cfg.separator else None

    def load_engine(self, path: str, device: str, dtype: str) -> QwenForcedAlignerEngine:
        engine = QwenForcedAlignerEngine.load(path, device, dtype, threads=self.settings.torch_threads)
        if self.cfg.separator:  # the service is ready when both are loaded
            from services.runtime.serving.sources import resolve_model_path

            self.handle.phase = "fetching separator weights"
            sep = resolve_model_path(self.settings, "separator", self.cfg.separator, self.cfg.separator_revision,
                                     report=lambda text: setattr(self.handle, "phase", text))
            self.separator = VocalSeparator.load(sep, device)
        return engine

    def _run_separation(self, files: list[bytes]) -> list[np.ndarray]:
        assert self.separator is not None
        return [self.separator.vocals_of_file(data, max_seconds=self.cfg.max_audio_seconds) for data in files]

    def _run_batch(self, jobs: list[AlignJob]) -> list[list[UnitTime]]:
        return self.handle.get().align(jobs)

    @bentoml.api
    async def status(self) -> dict:
        return self.status_info()

    @bentoml.api
    @guarded("aligner")
    async def align(self, audio: np.ndarray, text: AlignLines) -> dict:
        """Time `text.lines` (lyrics) against the whole `audio`."""
        check_lyrics(text.lines, self.cfg)
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        check_audio(audio, self.cfg)
        lang = self._language(text.language, text.lines)
        return (await self._align_spans(audio, [(0, len(audio), list(text.lines))], lang)).model_dump()

    @bentoml.api
    @guarded("aligner")
    async def align_spans(self, audio: np.ndarray, text: AlignSpans) -> dict:
        """Time text already known per span of audio (ASR windows): each span's lines are aligned inside
        that span only."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        groups = [(int(s.start * SAMPLE_RATE), int(s.end * SAMPLE_RATE), list(s.lines)) for s in text.spans]
        # The length limit is per span here (each is one ASR window), not for the whole recording.
        for start, end, _ in groups:
            check_audio(audio[start:end], self.cfg)
        lang = self._language(text.language, [line for g in groups for line in g[2]])
        return (await self._align_spans(audio, groups, lang)).model_dump()

    @bentoml.api
    @guarded("aligner")
    async def separate(self, audio: np.ndarray) -> np.ndarray:
        """The vocals of an encoded audio file (its bytes, as uint8) as 16 kHz mono float32: what `align` and
        the ASR then take. The file is decoded here at the separation model's rate and channels."""
        if self.separations is None:
            raise InvalidRequest("vocal separation is not enabled here (QWEN_ALIGNER_SEPARATOR)", param="separate",
                                 code="separation_unavailable")
        self.handle.get()  # 503 with the state while loading or failed
        data = np.asarray(audio, dtype=np.uint8).tobytes()
        return (await self.separations.run([data]))[0]

    def _language(self, language: str | None, lines: list[str]) -> str:
        try:
            lang = LANGUAGES.parse(language) or LANGUAGES.parse(self.cfg.default_language)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="language", code="unsupported_language") from None
        return lang or lyrics.detect_language("\n".join(lines))

    async def _align_spans(self, audio: np.ndarray, groups: list[tuple[int, int, list[str]]], lang: str) -> Alignment:
        engine = self.handle.get()  # 503 with the state while loading or failed
        duration = len(audio) / SAMPLE_RATE
        all_lines: list[str] = []
        all_units: list[list[str]] = []
        jobs: list[AlignJob] = []
        offsets: list[float] = []
        window = min(self.cfg.window_seconds, engine.max_seconds)
        for start, end, lines in groups:
            part = audio[start:end]
            line_units = lyrics.units_for_lines(lines, lang, engine.units)
            all_lines += lines
            all_units += line_units
            # Windows inside the span, cut where no voice is heard (the quietest such point); lines shared out
            # by how much sound each has.
            energy = frame_rms(part, SAMPLE_RATE)
            speech = None
            if self.cfg.vad and len(part) > window * SAMPLE_RATE:  # cut where no voice is heard
                speech = (await asyncio.to_thread(vad.voice_activity().speech_probs, part), vad.FRAME_SECONDS)
            chunks = plan_chunks(part, SAMPLE_RATE, window, energy, speech)
            weights = lyrics.voiced_weights(part, chunks, SAMPLE_RATE, energy)
            ranges = lyrics.assign_lines([len(u) for u in line_units], weights)
            for c, (a, b) in zip(chunks, ranges):
                jobs.append(AlignJob(part[c.start : c.end], [u for units in line_units[a:b] for u in units]))
                offsets.append((start + c.start) / SAMPLE_RATE)
        if not any(all_units):
            raise Unprocessable("no alignable words in the text (only blank lines or punctuation)",
                                param="lyrics", code=EMPTY_LYRICS)
        per_job = await self.scheduler.run(jobs)
        unit_times = [t._replace(start=t.start + off, end=t.end + off) for off, times in zip(offsets, per_job)
                      for t in times]
        segments = lyrics.rebuild_segments(all_lines, all_units, unit_times, duration)
        summary = review.review_segments(segments, review.review_rules(self.settings))
        return Alignment(segments=segments, language=LANGUAGES.code(lang), duration=round(duration, 3),
                         chunks=len(jobs), review=summary)
