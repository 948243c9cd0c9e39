"""Fill the model cache before a service starts, so the service can mount it read-only and run offline.

    python fetch_models.py [SERVICE ...]     # default: QWEN_SERVICES, else every service

Run from the source root (the image's /home/bentoml/bento/src, or the repo): it reads the suite's own
settings, so QWEN_<SVC>_MODEL / _REVISION / QWEN_MODEL_CACHE mean exactly what they mean to the service
(and QWEN_ALIGNER_SEPARATOR / _SEPARATOR_REVISION: the aligner's vocal separator, fetched with it when set).
A service whose model is a local folder (or QWEN_MODELS=tiny) needs nothing. Idempotent: files already in
the cache are not downloaded again (huggingface_hub locks per file, so replicas starting together are safe).
Used by the Kubernetes init container, the compose `fetch-models` service and the systemd install note.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# This step is the one that may download: lift an inherited offline switch before huggingface_hub reads it.
os.environ["HF_HUB_OFFLINE"] = "0"
sys.path.insert(0, os.getcwd())

from services.runtime.core.settings import SERVICE_KEYS, get_settings  # noqa: E402


def main(argv: list[str]) -> int:
    settings = get_settings()
    keys = argv or settings.services or list(SERVICE_KEYS)
    unknown = [k for k in keys if k not in SERVICE_KEYS]
    if unknown:
        print(f"unknown service(s) {unknown}; known: {', '.join(SERVICE_KEYS)}", file=sys.stderr)
        return 2
    if settings.models == "tiny":
        print("QWEN_MODELS=tiny: nothing to fetch")
        return 0
    for key in keys:
        for what, model, revision in settings.service(key).weights():  # the model, the aligner's separator
            name = key if what == "model" else f"{key} {what}"
            if Path(os.path.expanduser(model)).is_dir():
                print(f"{name}: local folder {model}, nothing to fetch")
                continue
            if model.startswith(("/", "./", "../")):
                print(f"{name}: model path {model!r} does not exist", file=sys.stderr)
                return 1
            from huggingface_hub import snapshot_download

            path = snapshot_download(repo_id=model, revision=revision, cache_dir=settings.model_cache)
            print(f"{name}: {model}@{revision or 'main'} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
