"""What we pass to vLLM exists in the pinned vLLM: the captioner's `vllm serve` command line against the
options of vLLM 0.14's own parser, the ASR's vllm.LLM keywords against its EngineArgs fields. The record
is vendored in tests/fixtures/vllm/ (dumped from the locked wheel by regenerate.py there); the CPU build
the opt-in tests run (`make test-vllm`) is another version."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.captioner import vllm_backend as vb
from services.runtime.core.settings import ASRSettings, CaptionerSettings

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "vllm"
PIN = re.search(r'"vllm\[audio\]==([^;"]+)', (ROOT / "pyproject.toml").read_text()).group(1).strip()


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
    lock = (ROOT / "uv.lock").read_text()
    digest = re.search(rf'/vllm-{re.escape(PIN)}-[^"]+x86_64\.whl", hash = "sha256:([0-9a-f]{{64}})"', lock).group(1)
    for name in ("serve-args", "engine-args"):
        header, entries = record(name)
        assert f"vLLM {PIN} " in header[0] and any(f"sha256 {digest}" in h for h in header)
        assert len(entries) > 100  # the real parser has ~200 options, EngineArgs ~160 fields
    options = serve_options()
    assert "positional model_tag" in record("serve-args")[1]  # `vllm serve MODEL`
    assert options["--dtype"] == ["auto", "bfloat16", "float", "float16", "float32", "half"]


@pytest.mark.parametrize("dtype", ["auto", "float32", "float16", "bfloat16"])
def test_every_flag_of_the_captioner_command_is_a_vllm_serve_option(dtype):
    cfg = CaptionerSettings(vllm_command="vllm serve", vllm_host="0.0.0.0", vllm_port=8000, vllm_tensor_parallel_size=2,
                            vllm_gpu_memory_utilization=0.9, vllm_max_num_seqs=4, max_model_len=8192,
                            aliases=["captioner", "omni"])
    cmd = vb.build_command(cfg, "/models/captioner", dtype, 8000, tensor_parallel_size=2)
    options = serve_options()
    emitted = flags_of(cmd)
    assert len(emitted) >= 10
    assert [f for f in emitted if f not in options] == []
    for f in emitted:  # values of options with fixed choices are among them
        if options[f] is not None:
            assert cmd[cmd.index(f) + 1] in options[f], f


def test_every_dtype_placement_can_choose_is_a_vllm_dtype():
    from services.runtime.serving import device

    choices = serve_options()["--dtype"]
    chosen = {device.dtype_for(pref, cap) for pref in ("auto", "float32", "float16", "bfloat16")
              for cap in (None, (7, 5), (8, 0))}
    assert chosen == {"float32", "float16", "bfloat16"} and chosen <= set(choices)


def qwen_asr_llm_own_arguments() -> set[str]:
    """The arguments qwen_asr's Qwen3ASRModel.LLM keeps (the rest go to vllm.LLM), read from the installed
    package's source: importing qwen_asr takes ~20 s here."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("qwen_asr")
    source = Path(spec.submodule_search_locations[0]) / "inference" / "qwen3_asr.py"
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == "Qwen3ASRModel":
            llm = next(f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "LLM")
            assert llm.args.kwarg is not None and llm.args.kwarg.arg == "kwargs"  # the rest is forwarded
            return {a.arg for a in llm.args.args + llm.args.kwonlyargs} - {"cls", "model"}
    raise AssertionError("Qwen3ASRModel.LLM not found")


def test_asr_vllm_keywords_are_engine_args(monkeypatch):
    """What QwenASREngine.load passes to qwen_asr's Qwen3ASRModel.LLM, minus the arguments LLM keeps for
    itself, reaches vllm.LLM(model=..., **kwargs), whose keywords become EngineArgs."""
    import sys
    import types

    from services.asr.engine import QwenASREngine
    from services.asr.service import vllm_kwargs

    own = qwen_asr_llm_own_arguments()
    passed = {}

    class Qwen3ASRModel:
        @classmethod
        def LLM(cls, **kwargs):  # noqa: N802 - qwen_asr's name
            passed.update(kwargs)
            return object()

    monkeypatch.setitem(sys.modules, "qwen_asr", types.SimpleNamespace(Qwen3ASRModel=Qwen3ASRModel))
    cfg = ASRSettings(backend="vllm", vllm_gpu_memory_utilization=0.4, vllm_max_model_len=8192)
    QwenASREngine.load("/models/asr", backend="vllm", device="cuda:1", dtype="float16", max_new_tokens=1232,
                       vllm_kwargs=vllm_kwargs(cfg, "float16"))
    assert "max_new_tokens" in own and "max_new_tokens" in passed
    to_vllm = {k: v for k, v in passed.items() if k not in own}
    assert to_vllm == {"model": "/models/asr", "dtype": "float16", "gpu_memory_utilization": 0.4,
                       "max_model_len": 8192}
    fields = set(record("engine-args")[1])
    assert set(to_vllm) <= fields
    assert "device" not in fields  # vLLM 0.14 is placed by CUDA_VISIBLE_DEVICES, not an argument
