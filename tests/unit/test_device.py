import logging
import os
from types import SimpleNamespace

import pytest

from services.runtime.serving import device
from services.runtime.core.settings import Settings


@pytest.fixture
def gpus(monkeypatch):
    """A fake CUDA host: one GPU per compute capability given, answered by torch (NVML absent, so a real
    GPU host answers the same). Every query that would initialise CUDA is recorded in `calls`."""
    import torch

    calls = []

    def install(*capabilities, nvml=None):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: calls.append("is_available") or True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
        monkeypatch.setattr(torch.cuda, "get_device_capability",
                            lambda i: calls.append(("get_device_capability", i)) or capabilities[i])
        monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                            lambda f, i: calls.append(("set_per_process_memory_fraction", f, i)))
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
        monkeypatch.setattr(device, "_nvml", lambda: nvml)
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        return calls

    return install


class FakeNVML:
    """pynvml for GPUs of these capabilities, by NVML index."""

    def __init__(self, *capabilities):
        self.capabilities = capabilities

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.capabilities)

    def nvmlDeviceGetHandleByIndex(self, index):
        assert 0 <= index < len(self.capabilities)
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid):
        raise LookupError(uuid)

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return self.capabilities[handle]


def handle():
    return SimpleNamespace(device=None, dtype=None)


@pytest.fixture
def qwen_log(caplog):
    logger = logging.getLogger("qwen")
    # The qwen tree may not propagate to the root (runtime.core.logging): a record can arrive twice.
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="qwen")
    yield caplog
    logger.removeHandler(caplog.handler)


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
def test_dtype_defaults(pref, dev, out, gpus):
    gpus((8, 0))
    assert device.resolve_dtype_name(pref, dev) == out


def test_cuda_index_must_exist(gpus):
    gpus((7, 5), (8, 6))  # a T4 and an A10 (the capability of the device asked about decides)
    assert device.resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(RuntimeError, match="only 2"):
        device.resolve_device("cuda:2")
    assert device.resolve_dtype_name("auto", "cuda:1") == "bfloat16"
    assert device.resolve_dtype_name("auto", "cuda:0") == "float16"
    assert device.resolve_dtype_name("auto", "cuda") == "float16"  # cuda is the first GPU


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

    from services.runtime.core.settings import Settings

    monkeypatch.setenv("QWEN_TTS_DEVICE", "cuda:1")
    monkeypatch.setenv("QWEN_TTS_GPU_MEMORY_FRACTION", "0.45")
    s = Settings()
    assert s.device_for("tts") == "cuda:1" and s.device_for("asr") == "auto"
    assert s.tts.gpu_memory_fraction == 0.45
    monkeypatch.setenv("QWEN_ASR_DEVICE", "gpu0")
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize("capability, dtype", [((6, 1), "float16"), ((7, 0), "float16"), ((7, 5), "float16"),
                                               ((8, 0), "bfloat16"), ((8, 9), "bfloat16"), ((9, 0), "bfloat16")])
def test_auto_dtype_follows_compute_capability(capability, dtype, gpus):
    """bf16 from Ampere (8.0) on; below (P100 6.1, V100 7.0, T4 7.5) float16, as vLLM's CUDA platform."""
    gpus(capability)
    assert device.resolve_dtype_name("auto", "cuda:0") == dtype
    assert device.resolve_dtype_name("float32", "cuda:0") == "float32"  # an explicit choice stays


def test_availability_check_leaves_the_driver_alone_when_nvml_answers(monkeypatch):
    """torch.cuda.is_available() calls cuInit (a vLLM engine forked later cannot use CUDA): not asked when
    torch.cuda.device_count() (NVML first) sees GPUs."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: pytest.fail("is_available called"))
    assert device.resolve_device("auto") == "cuda" and device.resolve_device("cuda:1") == "cuda:1"


def test_torch_engine_placement_caps_memory_and_warns_about_bf16_below_8(monkeypatch, gpus, qwen_log):
    calls = gpus((7, 5), (7, 5))
    monkeypatch.setenv("QWEN_TTS_DEVICE", "cuda:1")
    monkeypatch.setenv("QWEN_TTS_GPU_MEMORY_FRACTION", "0.45")
    h = handle()
    p = device.place(Settings(), "tts", h)
    assert p == device.Placement("cuda:1", "float16", []) and (h.device, h.dtype) == ("cuda:1", "float16")
    assert ("set_per_process_memory_fraction", 0.45, 1) in calls and ("get_device_capability", 1) in calls
    assert not qwen_log.records
    monkeypatch.setenv("QWEN_TTS_DTYPE", "bfloat16")  # explicit: kept, loudly
    assert device.place(Settings(), "tts", handle()).dtype == "bfloat16"
    warned = sorted({r.getMessage() for r in qwen_log.records if r.levelno == logging.WARNING})
    assert len(warned) == 1 and "compute capability 7.5" in warned[0] and "float16" in warned[0]


def test_asr_vllm_placement_gives_its_gpu_to_the_child_without_initialising_cuda(monkeypatch, gpus):
    """QWEN_ASR_DEVICE=cuda:1 with the vLLM backend on a host that shows GPUs 2,3: the server child gets
    GPU 3, the dtype comes from GPU 3's capability read through NVML, and torch in this process neither
    initialises CUDA (get_device_capability, set_per_process_memory_fraction, is_available) nor caps memory;
    this process's CUDA_VISIBLE_DEVICES is left alone (the child's environment carries the placement)."""
    calls = gpus((7, 5), (7, 5), nvml=FakeNVML((9, 0), (9, 0), (8, 6), (7, 5)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # restored after the test
    monkeypatch.setenv("QWEN_ASR_BACKEND", "vllm")
    monkeypatch.setenv("QWEN_ASR_DEVICE", "cuda:1")
    monkeypatch.setenv("QWEN_ASR_GPU_MEMORY_FRACTION", "0.45")  # ignored for vLLM (its utilization caps it)
    server = lambda d: device.VLLM_SERVER  # noqa: E731
    h = handle()
    p = device.place(Settings(), "asr", h, server)
    assert p == device.Placement("cuda:1", "float16", ["3"]) and h.device == "cuda:1"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert calls == []
    # The same GPU's capability decides: 8.6 on GPU 2.
    monkeypatch.setenv("QWEN_ASR_DEVICE", "cuda:0")
    assert device.place(Settings(), "asr", handle(), server) == device.Placement("cuda:0", "bfloat16", ["2"])
    assert calls == []


def test_vllm_placement_refuses_bf16_below_ampere(monkeypatch, gpus):
    gpus((7, 5), nvml=FakeNVML((7, 5)))
    monkeypatch.setenv("QWEN_ASR_DEVICE", "cuda:0")
    monkeypatch.setenv("QWEN_ASR_DTYPE", "bfloat16")
    with pytest.raises(RuntimeError, match="vLLM refuses it"):  # vLLM would, after the download
        device.place(Settings(), "asr", handle(), lambda d: device.VLLM_SERVER)


def test_vllm_server_placement_spans_tensor_parallel_gpus(monkeypatch, gpus):
    calls = gpus((9, 0), (9, 0), (9, 0), (9, 0), nvml=FakeNVML((9, 0), (9, 0), (9, 0), (9, 0)))
    monkeypatch.setenv("QWEN_CAPTIONER_DEVICE", "cuda:2")
    server = lambda d: device.VLLM_SERVER  # noqa: E731
    assert device.place(Settings(), "captioner", handle(), server) == device.Placement("cuda:2", "bfloat16",
                                                                                       ["2", "3"])
    monkeypatch.setenv("QWEN_CAPTIONER_DEVICE", "cuda")
    assert device.place(Settings(), "captioner", handle(), server).gpus == ["0", "1", "2", "3"]  # every GPU
    monkeypatch.setenv("QWEN_CAPTIONER_VLLM_TENSOR_PARALLEL_SIZE", "2")
    assert device.place(Settings(), "captioner", handle(), server).gpus == ["0", "1"]
    monkeypatch.setenv("QWEN_CAPTIONER_DEVICE", "cuda:3")
    with pytest.raises(RuntimeError, match="needs GPUs 3..4"):
        device.place(Settings(), "captioner", handle(), server)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # a child's environment, not ours
    assert not [c for c in calls if c[0] == "set_per_process_memory_fraction"]


def test_visible_gpus(monkeypatch):
    import torch

    monkeypatch.setattr(device, "_nvml", lambda: FakeNVML((8, 0), (8, 0), (8, 0)))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert device.visible_gpus() == ["0", "1", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert device.visible_gpus() == ["3", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,-1,3")  # CUDA stops at the first invalid id
    assert device.visible_gpus() == ["2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert device.visible_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(device, "_nvml", lambda: None)  # no NVML: torch's count, when torch is loaded
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device.visible_gpus() == ["0", "1"]


