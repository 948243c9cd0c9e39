"""What we pass to vLLM exists in the shipped vLLM: every service's server command line against the options
of the parser of the vLLM the engine environment locks (engines/cuda/uv.lock). The record is vendored in
tests/fixtures/vllm/ (dumped from the locked wheel by regenerate.py there); the engine tests run the same
version's CPU build (engines/cpu, `make test-engines`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.asr import vllm_backend as asr_vllm
from services.captioner import vllm_backend as vb
from services.runtime.core.settings import ASRSettings, CaptionerSettings, DiagramSettings, VLSettings
from services.vl import vllm_backend as vl_vllm

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "vllm"
ENGINE_LOCK = ROOT / "engines" / "cuda" / "uv.lock"
PIN = re.search(r'^name = "vllm"\nversion = "([^"]+)"', ENGINE_LOCK.read_text(), re.M).group(1)


def record(name: str) -> tuple[list[str], list[str]]:
    """(header lines, entries) of a vendored record of the pinned version."""
    lines = (FIXTURES / f"{name}-{PIN}.txt").read_text().splitlines()
    return [ln[2:] for ln in lines if ln.startswith("# ")], [ln for ln in lines if ln and not ln.startswith("#")]


def serve_options() -> dict[str, list[str] | None]:
    """Every option string of `vllm serve` -> its choices (None: free value)."""
    out: dict[str, list[str] | None] = {}
    for entry in record("serve-args")[1]:
        if entry.startswith("positional "):
            continue
        flags, _, choices = entry.partition("\tchoices=")
        for f in flags.split():
            out[f] = choices.split(",") if choices else None
    return out


def flags_of(cmd: list[str]) -> list[str]:
    return [a for a in cmd if a.startswith("--")]


def test_the_record_is_of_the_locked_wheel():
    lock = ENGINE_LOCK.read_text()
    digest = re.search(rf'/vllm-{re.escape(PIN)}-[^"]+x86_64\.whl", hash = "sha256:([0-9a-f]{{64}})"', lock).group(1)
    for name in ("serve-args", "engine-args"):
        header, entries = record(name)
        assert f"vLLM {PIN} " in header[0] and any(f"sha256 {digest}" in h for h in header)
        assert len(entries) > 100  # the real parser has ~200 options, EngineArgs ~160 fields
    options = serve_options()
    assert "positional model_tag" in record("serve-args")[1]  # `vllm serve MODEL`
    assert options["--dtype"] == ["auto", "bfloat16", "float", "float16", "float32", "half"]


def commands(dtype: str) -> dict[str, list[str]]:
    """Each vLLM service's command line, as its managed child would run it."""
    cap = CaptionerSettings(vllm_command="vllm serve", vllm_host="0.0.0.0", vllm_port=8000, vllm_tensor_parallel_size=2,
                            vllm_gpu_memory_utilization=0.9, vllm_max_num_seqs=4, max_model_len=8192,
                            aliases=["captioner", "omni"])
    from services import tiny

    asr = ASRSettings(vllm_command="vllm serve", vllm_port=8001)
    adapters = {p.name: str(p) for p in sorted((tiny.ensure("diagram") / "adapters").iterdir())}
    pixels = {"min_pixels": 3136, "max_pixels": 1003520}
    return {"captioner": vb.build_command(cap, "/models/captioner", dtype, 8000, tensor_parallel_size=2),
            "asr": asr_vllm.managed(asr, "/models/asr", dtype).command,
            "vl": vl_vllm.managed(VLSettings(vllm_command="vllm serve", vllm_port=8002), "vl", "/models/vl", dtype,
                                  pixels=pixels).command,
            "diagram": vl_vllm.managed(DiagramSettings(vllm_command="vllm serve", vllm_port=8003), "diagram",
                                       "/models/diagram", dtype, adapters=adapters, pixels=pixels).command}


@pytest.mark.parametrize("service", ["captioner", "asr", "vl", "diagram"])
@pytest.mark.parametrize("dtype", ["auto", "float32", "float16", "bfloat16"])
def test_every_flag_of_each_command_is_a_vllm_serve_option(service, dtype):
    cmd = commands(dtype)[service]
    options = serve_options()
    emitted = flags_of(cmd)
    assert len(emitted) >= 10
    assert [f for f in emitted if f not in options] == []
    for f in emitted:  # values of options with fixed choices are among them
        if options[f] is not None:
            assert cmd[cmd.index(f) + 1] in options[f], f


def test_the_diagram_command_serves_its_adapters():
    """LoRA on, so the check above covers its flags too; the rank cap is among the parser's choices."""
    cmd = commands("auto")["diagram"]
    assert {"--enable-lora", "--lora-modules", "--max-lora-rank", "--max-loras"} <= set(flags_of(cmd))
    assert cmd[cmd.index("--max-lora-rank") + 1] in serve_options()["--max-lora-rank"]


def test_every_dtype_placement_can_choose_is_a_vllm_dtype():
    from services.runtime.serving import device

    choices = serve_options()["--dtype"]
    chosen = {device.dtype_for(pref, cap) for pref in ("auto", "float32", "float16", "bfloat16")
              for cap in (None, (7, 5), (8, 0))}
    assert chosen == {"float32", "float16", "bfloat16"} and chosen <= set(choices)
