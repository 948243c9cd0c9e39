"""CLI: python -m services.tiny build --out DIR [--only aligner,asr]"""

from __future__ import annotations

import argparse
import time

from . import FAMILIES, build_all, default_root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.tiny")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or reuse cached) tiny checkpoints")
    b.add_argument("--out", default=None, help=f"root folder (default: $QWEN_TINY_DIR or {default_root()})")
    b.add_argument("--only", default="", help=f"comma list of families: {','.join(FAMILIES)}")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    only = [f.strip() for f in args.only.split(",") if f.strip()] or None
    t0 = time.perf_counter()
    for family, path in build_all(args.out, only).items():
        print(f"{family:10s} {path}")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
