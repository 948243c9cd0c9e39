"""Write a Bento's requirements from uv.lock: `python bentos/requirements.py cpu|cuda OUT`.

cuda: `uv export` as is (PyPI's torch 2.9.1 is the CUDA build). vLLM is not in it: the CUDA Bento installs
the engine environment (engines/cuda/uv.lock) beside it, by its setup script.
cpu: the same set, the torch family switched to the +cpu builds of the same versions,
PyTorch's CPU index named in the file itself (pip and uv read `--extra-index-url` lines), and the
nvidia-*/triton wheels they no longer need dropped.

Both outputs are committed (a fresh clone's `bentoml build` reads bentos/requirements-cpu.txt), and
tests/deploy/test_bentos.py checks that they equal `render(target)` for the current uv.lock.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

TARGETS = ("cpu", "cuda")
TORCH_FAMILY = ("torch", "torchvision", "torchaudio")
CUDA_ONLY = re.compile(r"^(nvidia-[\w-]+|triton|cuda-[\w-]+)==")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def uv() -> list[str]:
    # As the Makefile finds it: on PATH, else the module it installs into python3 on first use.
    if path := shutil.which("uv"):
        return [path]
    for python in (sys.executable, "python3"):
        if subprocess.run([python, "-m", "uv", "--version"], capture_output=True).returncode == 0:
            return [python, "-m", "uv"]
    raise SystemExit("uv not found: run `make uv`")


def engine_export(flavor: str = "cuda") -> str:
    """engines/<flavor>/uv.lock as a requirements file with hashes (what the CUDA image installs, frozen:
    `uv pip install --require-hashes --no-deps`). The project's own uv settings stay out (UV_NO_CONFIG)."""
    from pathlib import Path

    project = Path(__file__).resolve().parents[1] / "engines" / flavor
    cmd = [*uv(), "export", "--frozen", "--project", str(project), "--no-emit-project", "--no-header",
           "--format", "requirements-txt"]
    return subprocess.run(cmd, check=True, capture_output=True, text=True,
                          env={**os.environ, "UV_NO_CONFIG": "1"}).stdout


def export() -> list[str]:
    cmd = [*uv(), "export", "--frozen", "--no-hashes", "--no-emit-project", "--format", "requirements-txt"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def cpu(lines: list[str]) -> list[str]:
    out = [f"--extra-index-url {CPU_INDEX}"]
    for line in lines:
        name = line.split("==")[0].strip().lower()
        if CUDA_ONLY.match(line.strip()):
            continue
        if name in TORCH_FAMILY:
            spec, _, marker = line.partition(";")
            line = spec.strip() + "+cpu" + (f" ;{marker}" if marker else "")
        out.append(line)
    return out


def render(target: str) -> str:
    if target not in TARGETS:
        raise SystemExit(f"target must be one of {TARGETS}, not {target!r}")
    lines = cpu(export()) if target == "cpu" else export()
    return (f"# generated from uv.lock by bentos/requirements.py {target}; do not edit\n"
            + "\n".join(lines) + "\n")


def main() -> None:
    target, path = sys.argv[1], sys.argv[2]
    text = render(target)
    with open(path, "w") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
