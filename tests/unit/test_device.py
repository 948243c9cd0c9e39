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
