import pytest

from services.runtime import device


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert device.resolve_device("auto") == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device.resolve_device("auto") == "cpu"


def test_explicit_device_that_is_missing_fails_loudly(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA"):
        device.resolve_device("cuda")


@pytest.mark.parametrize("pref, dev, out", [("auto", "cuda", "bfloat16"), ("auto", "cpu", "float32"),
                                            ("auto", "mps", "float32"), ("float16", "cuda", "float16")])
def test_dtype_defaults(pref, dev, out):
    assert device.resolve_dtype_name(pref, dev) == out


def test_cuda_index_must_exist(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device.resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(RuntimeError, match="only 2"):
        device.resolve_device("cuda:2")
    assert device.resolve_dtype_name("auto", "cuda:1") == "bfloat16"


def test_memory_fraction_applies_only_on_cuda(monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, i: calls.append((f, i)))
    device.limit_gpu_memory("cpu", 0.45)
    device.limit_gpu_memory("cuda:1", None)
    device.limit_gpu_memory("cuda:1", 0.45)
    assert calls == [(0.45, 1)]


def test_per_service_device_strings_are_validated(monkeypatch):
    from pydantic import ValidationError

    from services.runtime.settings import Settings

    monkeypatch.setenv("QWEN_TTS_DEVICE", "cuda:1")
    monkeypatch.setenv("QWEN_TTS_GPU_MEMORY_FRACTION", "0.45")
    s = Settings()
    assert s.device_for("tts") == "cuda:1" and s.device_for("asr") == "auto"
    assert s.tts.gpu_memory_fraction == 0.45
    monkeypatch.setenv("QWEN_ASR_DEVICE", "gpu0")
    with pytest.raises(ValidationError):
        Settings()
