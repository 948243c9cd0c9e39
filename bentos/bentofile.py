"""One description, two Bentos: `python bentos/bentofile.py cpu|cuda OUT` writes a target's bentofile.

cpu is the root bentofile.yaml as is (what `bentoml build` at the root reads). Any other target is the
root file with the keys of bentos/<target>.yaml replaced: mappings merged key by key, `envs` by name (a
value replaced in place, a new name appended), anything else (lists included) replaced whole. The result
is checked by BentoML's own bentofile schema before it is written.
"""

from __future__ import annotations

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


def main() -> None:
    from bentoml._internal.bento.build_config import BentoBuildConfig

    target, path = sys.argv[1], sys.argv[2]
    config = describe(target)
    BentoBuildConfig.load(config)  # unknown or mistyped keys fail here, not in the middle of a build
    with open(path, "w") as fh:
        fh.write(f"# generated from bentofile.yaml + bentos/{target}.yaml by bentos/bentofile.py; do not edit\n")
        yaml.safe_dump(config, fh, sort_keys=False)


if __name__ == "__main__":
    main()
