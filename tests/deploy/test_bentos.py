"""One description, two Bentos. The root bentofile.yaml is the CPU Bento (`bentoml build` at the root, the
command a BentoML user types first, works on a fresh clone); the CUDA Bento is that file with the keys of
bentos/cuda.yaml replaced (bentos/bentofile.py). The first tests read the description only (seconds);
the rest build all three Bentos (root, `make bento-cpu`, `make bento-cuda`) and check what we ship:
base image, pinned packages, the right torch builds, no secrets, a non-root user, the BentoML entrypoint,
and that the targets differ only where they should."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BENTOML = Path(sys.executable).parent / "bentoml"
SECRET_NAMES = ("QWEN_API_KEY", "SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY")
TORCH_FAMILY = ("torch", "torchvision", "torchaudio")
MODEL_SERVICES = ("aligner", "asr", "tts", "captioner", "diagram", "vl")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bentos_{name}", ROOT / "bentos" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flatten(obj, prefix: str = "") -> dict[str, object]:
    """Leaf paths of a YAML document; lists of named mappings (envs, services) are keyed by name."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list) and obj and all(isinstance(x, dict) and "name" in x for x in obj):
        items = ((x["name"], {k: v for k, v in x.items() if k != "name"}) for x in obj)
    else:
        return {prefix: obj}
    out: dict[str, object] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def differing(a, b) -> set[str]:
    fa, fb = flatten(a), flatten(b)
    return {k for k in fa.keys() | fb.keys() if fa.get(k, "<absent>") != fb.get(k, "<absent>")}


# -- the description (no build) -------------------------------------------------------------------------

DESCRIPTION_DIFF = {"name", "labels.target", "python.requirements_txt", "envs.QWEN_DEVICE.value",
                    "envs.QWEN_ENGINE_HOME.value", "docker.setup_script"}


def test_the_root_bentofile_is_the_cpu_target_and_cuda_differs_only_where_it_should():
    from bentoml._internal.bento.build_config import BentoBuildConfig

    bentofile = load_script("bentofile")
    root = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    cpu, cuda = bentofile.describe("cpu"), bentofile.describe("cuda")
    assert cpu == root and cpu["name"] == "qwen-bento-cpu" and cuda["name"] == "qwen-bento-cuda"
    assert differing(cpu, cuda) == DESCRIPTION_DIFF
    # envs merged by name: QWEN_DEVICE replaced in place, every other variable kept in its order; the CUDA
    # Bento adds where its engine environment is
    assert [e["name"] for e in cuda["envs"]] == [e["name"] for e in cpu["envs"]] + ["QWEN_ENGINE_HOME"]
    assert {e["name"]: e["value"] for e in cuda["envs"]}["QWEN_DEVICE"] == "cuda"
    for config in (cpu, cuda):
        BentoBuildConfig.load(config)  # BentoML's own schema: no unknown or mistyped key
        reqs = config["python"]["requirements_txt"]
        # On a fresh clone the file is there: committed, so neither missing nor git-ignored.
        assert (ROOT / reqs).is_file(), reqs
        ignored = subprocess.run(["git", "check-ignore", "-q", reqs], cwd=ROOT)
        assert ignored.returncode == 1, f"{reqs} is git-ignored"


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_committed_requirements_are_what_uv_lock_gives(target):
    path = ROOT / "bentos" / f"requirements-{target}.txt"
    assert path.read_text() == load_script("requirements").render(target), (
        f"{path.name} is stale: run `python bentos/requirements.py {target} {path.relative_to(ROOT)}`")


def pins(text: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith(("#", "--")):
            name, _, version = line.split(";")[0].strip().partition("==")
            out.setdefault(name, set()).add(version)
    return out


def test_targets_share_every_pin_but_the_torch_builds():
    cpu = pins((ROOT / "bentos/requirements-cpu.txt").read_text())
    cuda = pins((ROOT / "bentos/requirements-cuda.txt").read_text())
    for name in TORCH_FAMILY:
        assert {v.removesuffix("+cpu") for v in cpu.pop(name)} == cuda[name] and all(
            not v.endswith("+cpu") for v in cuda.pop(name))
    assert {n: v for n, v in cuda.items() if n in cpu} == cpu  # the CPU set, same versions
    assert "vllm" not in cuda  # vLLM is the engine environment's (engines/cuda/uv.lock), not the serving one's


# -- the built Bentos -----------------------------------------------------------------------------------

def fresh_clone(dest: Path) -> Path:
    """What a clone of this tree holds: tracked and unignored files, none of the ignored generated ones."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def only_bento(home: Path, name: str) -> Path:
    dirs = [d for d in (home / "bentos" / name).iterdir() if d.is_dir() and d.name != "latest"]
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.fixture(scope="module")
def bentos(tmp_path_factory) -> dict[str, Path]:
    # A secret in the build environment must not end up in the image.
    base = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "QWEN_API_KEY": "do-not-bake-me-8e1f"}
    home = tmp_path_factory.mktemp("bentoml_home")
    out = subprocess.run(["make", "-s", "bento-cpu", "bento-cuda"], cwd=ROOT, env={**base, "BENTOML_HOME": str(home)},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    found = {target: only_bento(home, f"qwen-bento-{target}") for target in ("cpu", "cuda")}
    # The user's command on a fresh clone: plain `bentoml build`, none of the Makefile's variables.
    clone = fresh_clone(tmp_path_factory.mktemp("clone"))
    root_home = tmp_path_factory.mktemp("bentoml_home_root")
    user_env = {k: v for k, v in base.items() if k not in ("BENTOML_CONFIG", "BENTOML_NO_LOCAL_URL")}
    out = subprocess.run([str(BENTOML), "build"], cwd=clone, env={**user_env, "BENTOML_HOME": str(root_home)},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    found["root"] = only_bento(root_home, "qwen-bento-cpu")
    return found


def requirements(bento: Path) -> list[str]:
    lines = (bento / "env/python/requirements.txt").read_text().splitlines()
    return [x for x in lines if x.strip() and not x.startswith(("#", "--"))]


def bento_yaml(bento: Path) -> dict:
    meta = yaml.safe_load((bento / "bento.yaml").read_text())
    del meta["version"], meta["creation_time"]
    return meta


def tree(bento: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {str(p.relative_to(bento)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(bento.rglob("*")) if p.is_file() and str(p.relative_to(bento)) not in skip}


def test_the_root_build_is_the_cpu_target(bentos):
    root, cpu = bentos["root"], bentos["cpu"]
    assert bento_yaml(root) == bento_yaml(cpu)
    # Dockerfile, requirements, source (with its effective bentofile.yaml), schema: byte for byte.
    assert tree(root, skip=("bento.yaml",)) == tree(cpu, skip=("bento.yaml",))
    assert "src/services/gateway/service.py" in tree(root)


def test_the_targets_differ_only_where_they_should(bentos):
    import difflib

    cpu, cuda = bentos["cpu"], bentos["cuda"]
    # The image: the same base, system packages and steps; the device default differs, and the CUDA image
    # knows where its engine environment is and runs the setup script that installs it.
    lines = [(cpu / "env/docker/Dockerfile").read_text().splitlines(),
             (cuda / "env/docker/Dockerfile").read_text().splitlines()]
    diff = [d for d in difflib.unified_diff(*lines, lineterm="", n=0) if d[:1] in "+-" and d[:3] not in ("---", "+++")]
    assert diff[:2] == ["-ARG QWEN_DEVICE=cpu", "+ARG QWEN_DEVICE=cuda"]
    assert diff[2:4] == ["+ARG QWEN_ENGINE_HOME=/opt/qwen-engine", "+ENV QWEN_ENGINE_HOME=$QWEN_ENGINE_HOME"]
    assert len(diff) == 5 and re.fullmatch(r"\+RUN chmod \+x ./env/docker/script__\w+ && ./env/docker/script__\w+",
                                           diff[4]), diff
    # The effective bentofile each Bento records is the description's difference, nothing more.
    recorded = [yaml.safe_load((b / "src/bentofile.yaml").read_text()) for b in (cpu, cuda)]
    assert differing(*recorded) == DESCRIPTION_DIFF | {"docker.env.QWEN_DEVICE", "docker.env.QWEN_ENGINE_HOME",
                                                       "envs.QWEN_ENGINE_HOME.stage"}
    # The metadata: name, label, device, requirements, and the GPUs the CUDA services declare.
    gpus = {f"services.{s}.config.resources.{k}" for s in MODEL_SERVICES for k in ("gpu", "gpu_type")}
    assert differing(bento_yaml(cpu), bento_yaml(cuda)) == {
        "name", "labels.target", "envs.QWEN_DEVICE.value", "image.python_requirements", "envs.QWEN_ENGINE_HOME.value",
        "envs.QWEN_ENGINE_HOME.stage", "image.post_commands"} | gpus
    # The source shipped is the same.
    src = lambda b: {k: v for k, v in tree(b).items() if k.startswith("src/") and k != "src/bentofile.yaml"}
    assert src(cpu) == src(cuda) and "src/configuration.yaml" in src(cpu)


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


@pytest.mark.parametrize("target", ["cpu", "cuda", "root"])
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
    text = (bentos["cpu"] / "env/python/requirements.txt").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in text.splitlines()
    assert "download.pytorch.org" not in (bentos["cuda"] / "env/python/requirements.txt").read_text()


def test_cuda_installs_the_engine_environment_beside_the_serving_one(bentos):
    """The serving requirements carry no vLLM; the image runs the setup script written from engines/cuda/uv.lock
    (vLLM 0.30.0, hashes checked), which installs it at /opt/qwen-engine, before the image drops to its user."""
    load_script("bentofile")  # the module the build used
    reqs = requirements(bentos["cuda"])
    assert "torch==2.9.1" in reqs and not any(r.startswith("vllm") for r in reqs)
    df = (bentos["cuda"] / "env/docker/Dockerfile").read_text()
    (script,) = [p for p in (bentos["cuda"] / "env/docker").iterdir() if p.name.startswith("script__")]
    assert f"./env/docker/{script.name}" in df and df.index(script.name) < df.rindex("\nUSER bentoml")
    assert script.read_text() == load_script("bentofile").engine_setup_script()
    assert "vllm==0.30.0" in script.read_text()
    assert not [p for p in (bentos["cpu"] / "env/docker").iterdir() if p.name.startswith("script__")]


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_source_is_the_service_package_only(bentos, target):
    src = bentos[target] / "src"
    assert (src / "services/gateway/service.py").is_file() and (src / "configuration.yaml").is_file()
    shipped = {p.name for p in (src / "services/playground").iterdir()}
    assert shipped == {p.name for p in (ROOT / "services/playground").iterdir()}, shipped  # the page, whole
    assert not (src / "tests").exists() and not (src / ".venv").exists() and not (src / "bentos").exists()
    meta = yaml.safe_load((bentos[target] / "bento.yaml").read_text())
    assert meta["service"] == "services.gateway:Gateway"
    names = {s["name"] for s in meta["services"]}
    assert {"qwen-bento", *MODEL_SERVICES} <= names


def test_gpus_are_declared_in_the_cuda_bento_only(bentos):
    def resources(target):
        meta = yaml.safe_load((bentos[target] / "bento.yaml").read_text())
        return {s["name"]: (s.get("config") or {}).get("resources") or {} for s in meta["services"]}

    cpu, cuda = resources("cpu"), resources("cuda")
    assert not any("gpu" in r for r in cpu.values()), cpu
    assert cuda["captioner"]["gpu"] == 2 and cuda["asr"]["gpu"] == 1 and "gpu" not in cuda["qwen-bento"]
    assert all(cuda[s].get("gpu_type") for s in MODEL_SERVICES)
