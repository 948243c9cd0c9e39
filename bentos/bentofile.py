"""One description, two Bentos: `python bentos/bentofile.py cpu|cuda OUT` writes a target's bentofile.

cpu is the root bentofile.yaml as is (what `bentoml build` at the root reads). Any other target is the
root file with the keys of bentos/<target>.yaml replaced: mappings merged key by key, `envs` by name (a
value replaced in place, a new name appended), anything else (lists included) replaced whole. The result
is checked by BentoML's own bentofile schema before it is written.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("cpu", "cuda")


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if key == "envs":
            envs = {e["name"]: e for e in base.get("envs", [])}
            envs.update({e["name"]: e for e in value})
            out[key] = list(envs.values())
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = merge(base[key], value)
        else:
            out[key] = value
    return out


def describe(target: str) -> dict:
    if target not in TARGETS:
        raise SystemExit(f"target must be one of {TARGETS}, not {target!r}")
    base = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    if target == "cpu":
        return base
    return merge(base, yaml.safe_load((ROOT / "bentos" / f"{target}.yaml").read_text()))


ENGINE_HOME = "/opt/qwen-engine"  # runtime.serving.vllm_server.IMAGE_ENGINE_HOME
ENGINE_SETUP = ROOT / "bentos" / "engine-setup-cuda.sh"  # generated here (git-ignored); bentos/cuda.yaml names it


def engine_setup_script() -> str:
    """The CUDA Bento's setup script: the engine environment (engines/cuda/uv.lock, exported with hashes) installed
    frozen at ENGINE_HOME. BentoML runs it as root while it builds the image, after the serving packages and
    before the Bento's source is copied in: so the lock travels inside the script."""
    spec = importlib.util.spec_from_file_location("bentos_requirements", ROOT / "bentos" / "requirements.py")
    requirements = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(requirements)
    locked = requirements.engine_export("cuda").strip()
    return f"""#!/usr/bin/env bash
# generated from engines/cuda/uv.lock by bentos/bentofile.py; do not edit.
# The engine environment of the CUDA image: vLLM and its stack, apart from the serving environment (its own
# transformers and torch), at {ENGINE_HOME}; the services start its `python -m vllm.entrypoints.openai.api_server`.
set -euo pipefail
home={ENGINE_HOME}
command -v uv >/dev/null || python3 -m pip install --quiet "uv==0.13.9"
export UV_NO_CONFIG=1
uv venv --quiet --python 3.11 "$home"
reqs=$(mktemp)
cat > "$reqs" <<'LOCKED'
{locked}
LOCKED
uv pip install --python "$home/bin/python" --require-hashes --no-deps -r "$reqs"
rm -f "$reqs"
echo cuda > "$home/qwen-engine.flavor"
"$home/bin/python" -c "import vllm; print('engine environment: vllm', vllm.__version__)"
"""


def main() -> None:
    from bentoml._internal.bento.build_config import BentoBuildConfig

    target, path = sys.argv[1], sys.argv[2]
    config = describe(target)
    if target == "cuda":
        ENGINE_SETUP.write_text(engine_setup_script())
        ENGINE_SETUP.chmod(0o755)
    BentoBuildConfig.load(config)  # unknown or mistyped keys fail here, not in the middle of a build
    with open(path, "w") as fh:
        fh.write(f"# generated from bentofile.yaml + bentos/{target}.yaml by bentos/bentofile.py; do not edit\n")
        yaml.safe_dump(config, fh, sort_keys=False)


if __name__ == "__main__":
    main()
