"""Where model weights come from: tiny (QWEN_MODELS=tiny), a local path, or a Hugging Face id.

A hub id is downloaded once per deployment into the shared HF cache (huggingface_hub locks per file, so
workers starting together do not download twice) and honours HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import os
from pathlib import Path

from .logging import get_logger
from .settings import Settings

log = get_logger("sources")


def resolve_model_path(settings: Settings, family: str, model: str, revision: str | None = None) -> str:
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
    return snapshot_download(repo_id=model, revision=revision, cache_dir=settings.model_cache)
