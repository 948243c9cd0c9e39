"""Both Bentos build from the one source (`make bento-cpu`, `make bento-cuda`), and their generated
Dockerfiles and requirements are what we ship: base image, pinned packages, the right torch builds, no
secrets, a non-root user, the BentoML entrypoint."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SECRET_NAMES = ("QWEN_API_KEY", "SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY")


@pytest.fixture(scope="module")
def bentos(tmp_path_factory) -> dict[str, Path]:
    home = tmp_path_factory.mktemp("bentoml_home")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true",
           # A secret in the build environment must not end up in the image.
           "QWEN_API_KEY": "do-not-bake-me-8e1f"}
    out = subprocess.run(["make", "-s", "bento-cpu", "bento-cuda"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    found = {}
    for target in ("cpu", "cuda"):
        dirs = [d for d in (home / "bentos" / f"qwen-bento-{target}").iterdir() if d.is_dir() and d.name != "latest"]
        assert len(dirs) == 1
        found[target] = dirs[0]
    return found


def requirements(bento: Path) -> list[str]:
    lines = (bento / "env/python/requirements.txt").read_text().splitlines()
    return [x for x in lines if x.strip() and not x.startswith(("#", "--"))]


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_dockerfile_shape(bentos, target):
    df = (bentos[target] / "env/docker/Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", df, re.M)
    user = df.rindex("\nUSER bentoml")
    assert user < df.rindex("\nENTRYPOINT") and "entrypoint.sh" in df[df.rindex("\nENTRYPOINT"):]
    assert "EXPOSE 3000" in df and "sox" in df
    assert "ENV QWEN_DEVICE=$QWEN_DEVICE" in df and f"ARG QWEN_DEVICE={target}" in df
    for name in SECRET_NAMES:
        assert not re.search(rf"(ENV|ARG) \w*{name}", df), name
    assert "do-not-bake-me" not in df


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_every_package_is_pinned_and_bentoml_is_from_pypi(bentos, target):
    reqs = requirements(bentos[target])
    unpinned = [r for r in reqs if "==" not in r]
    assert not unpinned, unpinned
    assert "bentoml==1.4.39" in reqs and not any("file://" in r for r in reqs)
    assert "transformers==4.57.6" in reqs


def test_cpu_has_cpu_torch_and_no_cuda_wheels(bentos):
    reqs = requirements(bentos["cpu"])
    assert {"torch==2.9.1+cpu", "torchvision==0.24.1+cpu", "torchaudio==2.9.1+cpu"} <= set(reqs)
    assert not any(r.startswith(("nvidia-", "triton", "vllm")) for r in reqs)
    head = (bentos["cpu"] / "env/python/requirements.txt").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in head


def test_cuda_has_the_vllm_stack(bentos):
    reqs = requirements(bentos["cuda"])
    assert "torch==2.9.1" in reqs and any(r.startswith("vllm==0.14.0") for r in reqs)


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_source_is_the_service_package_only(bentos, target):
    src = bentos[target] / "src"
    assert (src / "services/gateway.py").is_file() and (src / "configuration.yaml").is_file()
    shipped = {p.name for p in (src / "services/playground").iterdir()}
    assert shipped == {p.name for p in (ROOT / "services/playground").iterdir()}, shipped  # the page, whole
    assert not (src / "tests").exists() and not (src / ".venv").exists()
    meta = yaml.safe_load((bentos[target] / "bento.yaml").read_text())
    assert meta["service"] == "services.gateway:Gateway"
    names = {s["name"] for s in meta["services"]}
    assert {"qwen-bento", "aligner", "asr", "tts", "captioner", "diagram", "vl"} <= names


def test_gpus_are_declared_in_the_cuda_bento_only(bentos):
    def resources(target):
        meta = yaml.safe_load((bentos[target] / "bento.yaml").read_text())
        return {s["name"]: (s.get("config") or {}).get("resources") or {} for s in meta["services"]}

    cpu, cuda = resources("cpu"), resources("cuda")
    assert not any("gpu" in r for r in cpu.values()), cpu
    assert cuda["captioner"]["gpu"] == 2 and cuda["asr"]["gpu"] == 1 and "gpu" not in cuda["qwen-bento"]
    assert all(cuda[s].get("gpu_type") for s in ("aligner", "asr", "tts", "captioner", "diagram", "vl"))
