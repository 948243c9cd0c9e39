"""Deterministic tiny checkpoints of the six real Qwen architectures (demo + tests).

Each family module exposes `build(out: Path) -> None`, writing a folder in the real Hugging Face repo
layout that only the production loaders read. `ensure(family)` builds once and caches: a folder is
reused while its fingerprint (the builder's source + the transformers version) is unchanged.

    python -m services.tiny build --out DIR [--only aligner,asr]
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import os
import shutil
import tempfile
from pathlib import Path

# service key -> builder module (services/tiny/<module>.py)
FAMILIES: dict[str, str] = {
    "aligner": "aligner",
    "asr": "asr",
    "tts": "tts",
    "captioner": "captioner",
    "diagram": "diagram",
    "vl": "vl",
    # Not a service: the aligner's optional vocal separation (QWEN_ALIGNER_SEPARATOR), Demucs.
    "separator": "separator",
}

_MARKER = ".tiny-fingerprint"


def default_root() -> Path:
    env = os.environ.get("QWEN_TINY_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qwen-bento" / "tiny"


def _fingerprint(family: str) -> str:
    import transformers

    # Builders share code (asr reuses aligner's pieces, all use tokenizer): hash the whole package.
    h = hashlib.sha256(family.encode())
    for src in sorted(Path(__file__).parent.glob("*.py")):
        h.update(src.read_bytes())
    h.update(transformers.__version__.encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure(family: str, root: str | Path | None = None) -> Path:
    """Return the folder of a tiny `family` checkpoint, building it first if missing or stale."""
    if family not in FAMILIES:
        raise KeyError(f"unknown tiny family {family!r}; known: {', '.join(FAMILIES)}")
    root = Path(root) if root is not None else default_root()
    out = root / family
    fp = _fingerprint(family)
    marker = out / _MARKER
    if marker.exists() and marker.read_text() == fp:
        return out
    with _locked(root / f".{family}.lock"):
        if marker.exists() and marker.read_text() == fp:  # built by another process meanwhile
            return out
        import torch

        module = importlib.import_module(f"services.tiny.{FAMILIES[family]}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{family}-", dir=root))
        try:
            torch.manual_seed(0)
            module.build(tmp)
            (tmp / _MARKER).write_text(fp)
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def build_all(root: str | Path | None = None, only: list[str] | None = None) -> dict[str, Path]:
    return {f: ensure(f, root) for f in (only or list(FAMILIES))}
