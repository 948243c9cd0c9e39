"""Write a Bento's requirements from uv.lock: `python bentos/requirements.py cpu|cuda OUT`.

cuda: `uv export --extra cuda` as is (PyPI's torch 2.9.1 is the CUDA build; vllm 0.14.0 pins it).
cpu: the same set without the extra, the torch family switched to the +cpu builds of the same versions
(PyTorch's CPU index, named in bentos/cpu.yaml) and the nvidia-*/triton wheels they no longer need dropped.
"""

from __future__ import annotations

import re
import subprocess
import sys

TORCH_FAMILY = ("torch", "torchvision", "torchaudio")
CUDA_ONLY = re.compile(r"^(nvidia-[\w-]+|triton|cuda-[\w-]+)==")


def export(extra: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "uv", "export", "--frozen", "--no-hashes", "--no-emit-project",
           "--format", "requirements-txt"]
    try:
        out = subprocess.run(["uv", *cmd[3:]] + (["--extra", extra] if extra else []), check=True,
                             capture_output=True, text=True).stdout
    except FileNotFoundError:
        out = subprocess.run(cmd + (["--extra", extra] if extra else []), check=True, capture_output=True,
                             text=True).stdout
    return [line for line in out.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def cpu(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        name = line.split("==")[0].strip().lower()
        if CUDA_ONLY.match(line.strip()):
            continue
        if name in TORCH_FAMILY:
            spec, _, marker = line.partition(";")
            line = spec.strip() + "+cpu" + (f" ;{marker}" if marker else "")
        out.append(line)
    return out


def main() -> None:
    target, path = sys.argv[1], sys.argv[2]
    lines = cpu(export(None)) if target == "cpu" else export("cuda")
    with open(path, "w") as fh:
        fh.write(f"# generated from uv.lock by bentos/requirements.py {target}; do not edit\n")
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
