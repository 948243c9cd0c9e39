"""bench/smoke_real.py (`make smoke-real`) end to end on the tiny checkpoints: one model that answers, one
whose load fails, the table and the exit status. (Real weights are for the first host that has them.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_real_prints_one_row_per_model_and_fails_on_a_failed_load(tiny_folder, tmp_path):
    root = tiny_folder("vl").parent  # the session's tiny checkpoints: nothing is rebuilt
    env = {**os.environ, "QWEN_MODELS": "tiny", "QWEN_TINY_DIR": str(root), "QWEN_TORCH_THREADS": "1",
           "OMP_NUM_THREADS": "1", "QWEN_SERVICES": "vl,tts", "QWEN_LOG_JSON": "false",
           "QWEN_VL_MAX_CONCURRENCY": "1",  # one model replica: the cheapest load
           # No MPS here: the TTS service fails to load, which the table must show (and not hide the VL row).
           "QWEN_TTS_DEVICE": "mps"}
    out = subprocess.run([sys.executable, "bench/smoke_real.py", "--max-tokens", "3", "--json",
                          "--log-dir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr[-2000:]
    lines = out.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("service "))
    assert [c.strip() for c in lines[head].split("|")] == ["service", "model", "device", "load s", "peak memory",
                                                           "first audio s", "tokens/s", "result"]
    table = [[c.strip() for c in line.split("|")] for line in lines[head + 2 : head + 4]]
    assert [row[0] for row in table] == ["vl", "tts"]  # QWEN_SERVICES order
    vl, tts = table
    assert vl[1:3] == ["tiny:vl", "cpu"] and float(vl[3]) > 0 and vl[4].endswith("GiB rss")
    assert vl[5] == "-" and float(vl[6]) > 0 and vl[7].startswith("ok (3 tokens")
    assert tts[1] == "tiny:tts" and tts[3] == "-" and tts[7].startswith("FAIL") and "MPS" in tts[7]
    assert f"--- tts: last lines of {tmp_path / 'tts.log'}" in out.stdout
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    assert [(r["service"], r["ok"]) for r in rows] == [("vl", True), ("tts", False)]
    assert rows[0]["tokens"] == 3 and rows[0]["peak_memory"]["bytes"] > 0
