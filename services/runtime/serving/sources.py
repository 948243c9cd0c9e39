"""Where model weights come from: tiny (QWEN_MODELS=tiny), a local path, or a Hugging Face id.

A hub id is downloaded once per deployment into the shared HF cache (huggingface_hub locks per file, so
workers starting together do not download twice) and honours HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import os
from pathlib import Path

from services.runtime.core.logging import get_logger
from services.runtime.core.settings import Settings

log = get_logger("sources")


def progress_class(report):
    """A tqdm class for snapshot_download's file-level progress that also calls `report("i/n files")`,
    so /health can say how far a download is (the bars themselves go to the log)."""
    from tqdm.auto import tqdm

    class _Progress(tqdm):
        def update(self, n=1):
            out = super().update(n)
            if self.total:
                report(f"fetching weights: {int(self.n)}/{int(self.total)} files")
            return out

    return _Progress


def resolve_model_path(settings: Settings, family: str, model: str, revision: str | None = None,
                       report=None) -> str:
    if settings.models == "tiny":
        from services import tiny

        return str(tiny.ensure(family, settings.tiny_dir))
    p = Path(os.path.expanduser(model))
    if p.is_dir():
        return str(p)
    if model.startswith(("/", "./", "../")):
        raise FileNotFoundError(f"model path {model!r} does not exist")
    from huggingface_hub import snapshot_download

    log.info("resolving model from the hub", extra={"model": model, "revision": revision})
    # Workers of one deployment share the cache: huggingface_hub's file locks make them wait for one
    # download instead of fetching twice.
    kwargs = {"tqdm_class": progress_class(report)} if report else {}
    return snapshot_download(repo_id=model, revision=revision, cache_dir=settings.model_cache, **kwargs)
