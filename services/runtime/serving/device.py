"""Device (cuda > mps > cpu), dtype and GPU placement of a model service.

dtype auto: bfloat16 on CUDA GPUs of compute capability 8.0 and later, float16 below (T4, V100), float32
elsewhere. Placement differs by what runs the model (`place`): torch in this process is capped by torch's
per-process memory fraction; a vLLM server child (runtime.serving.vllm_server) is placed by restricting its
CUDA_VISIBLE_DEVICES to its GPUs and capped by its own gpu_memory_utilization.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, NamedTuple, Sequence

from services.runtime.core.logging import get_logger

log = get_logger("device")

# bf16 tensor cores and the fused attention kernels start at Ampere (compute capability 8.0). Below it
# (T4 7.5, V100 7.0) torch runs bf16 emulated and slowly, and vLLM refuses it outright (its CUDA platform
# lists bf16 as supported only from 8.0 and its dtype check raises below).
BF16_MIN_CAPABILITY = (8, 0)

# What runs a service's model (the `engine` of `place`).
TORCH = "torch"  # torch in this process
VLLM_SERVER = "vllm-server"  # a vLLM server child process (runtime.serving.vllm_server)


def cuda_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else 0


def cuda_available() -> bool:
    """torch.cuda.is_available(), asking NVML first: torch.cuda.device_count() does, without initialising
    the CUDA driver in this process, whereas is_available() calls cuInit — after which a forked child (the
    engine core of a vLLM started here) cannot use CUDA."""
    import torch

    return torch.cuda.device_count() > 0 or torch.cuda.is_available()


def resolve_device(preference: str = "auto") -> str:
    import torch

    if preference == "auto":
        if cuda_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if preference.startswith("cuda"):
        if not cuda_available():
            raise RuntimeError(f"device {preference} requested but CUDA is not available")
        index = cuda_index(preference)
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"device {preference} requested but only {torch.cuda.device_count()} GPU(s) visible")
    if preference == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("QWEN_DEVICE=mps but MPS is not available")
    return preference


def visible_gpus() -> list[str]:
    """This process's GPUs as CUDA_VISIBLE_DEVICES ids, in CUDA's order, without initialising CUDA: the
    variable's entries up to the first invalid one (CUDA ignores the rest, "-1" hides all), else 0..n-1
    for the n GPUs the driver reports (NVML, which torch.cuda.device_count() also asks first; torch's count
    when NVML cannot answer and torch is loaded — the gateway does not load it for this)."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        ids: list[str] = []
        for d in (x.strip() for x in cvd.split(",")):
            if not d or d.startswith("-"):
                break
            ids.append(d)
        return ids
    n = _nvml_gpu_count()
    if n is None:
        torch = sys.modules.get("torch")
        try:
            n = int(torch.cuda.device_count()) if torch is not None else 0
        except Exception:  # noqa: BLE001 - no driver: no GPU
            n = 0
    return [str(i) for i in range(n)]


def visible_gpu_count() -> int:
    return len(visible_gpus())


def _nvml():
    """pynvml, initialised (nvidia-ml-py comes with bentoml and vllm); None without a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # noqa: BLE001 - no library, no driver
        return None


def _nvml_gpu_count() -> int | None:
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        return int(nvml.nvmlDeviceGetCount())
    except Exception:  # noqa: BLE001
        return None
    finally:
        nvml.nvmlShutdown()


def _nvml_capability(index: int) -> tuple[int, int] | None:
    """Compute capability of visible GPU `index` through NVML, as vLLM reads it: an integer id is NVML's
    index (PCI bus order: CUDA's own order matches it under CUDA_DEVICE_ORDER=PCI_BUS_ID, which hosts
    with mixed GPU models should set), a GPU-... id its UUID."""
    ids = visible_gpus()
    if index >= len(ids):
        return None
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        gpu = ids[index]
        handle = (nvml.nvmlDeviceGetHandleByIndex(int(gpu)) if gpu.isdigit()
                  else nvml.nvmlDeviceGetHandleByUUID(gpu))
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        return int(major), int(minor)
    except Exception:  # noqa: BLE001 - a MIG or partial id NVML cannot look up: torch answers
        return None
    finally:
        nvml.nvmlShutdown()


def cuda_capability(device: str, *, init_cuda: bool = True) -> tuple[int, int]:
    """Compute capability of a CUDA device. init_cuda=False (a vLLM engine will start in this process):
    read through NVML, so that torch does not initialise CUDA here — vLLM would then spawn its engine
    process instead of forking it, and a spawned process lacks qwen_asr's in-process model registration.
    torch answers when NVML cannot (vLLM itself does the same then)."""
    index = cuda_index(device)
    if not init_cuda:
        capability = _nvml_capability(index)
        if capability is not None:
            return capability
    import torch

    major, minor = torch.cuda.get_device_capability(index)
    return int(major), int(minor)


def dtype_for(preference: str, capability: tuple[int, int] | None) -> str:
    """The dtype rule. capability: the CUDA device's compute capability; None off CUDA."""
    if capability is None:
        return "float32" if preference == "auto" else preference
    if preference == "auto":
        return "bfloat16" if capability >= BF16_MIN_CAPABILITY else "float16"
    return preference


def resolve_dtype_name(preference: str, device: str, *, init_cuda: bool = True) -> str:
    capability = cuda_capability(device, init_cuda=init_cuda) if device.startswith("cuda") else None
    return dtype_for(preference, capability)


def limit_gpu_memory(device: str, fraction: float | None) -> None:
    """Cap this process's allocations on `device` (models sharing one GPU); no-op off CUDA."""
    if fraction is None or not device.startswith("cuda"):
        return
    import torch

    torch.cuda.set_per_process_memory_fraction(fraction, cuda_index(device))


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def vllm_gpu_count(cfg) -> int | None:
    """GPUs a service's vLLM engine spans: its vllm_tensor_parallel_size (None: every visible GPU from its
    device on; the captioner's default)."""
    return getattr(cfg, "vllm_tensor_parallel_size", 1)


def gpu_span(device: str, count: int | None, visible: Sequence[str]) -> list[str]:
    """The GPUs (CUDA_VISIBLE_DEVICES ids) an engine placed on `device` uses: `count` of them from the
    device's index on (None: all the rest). vLLM takes the first GPUs it sees, so restricting its
    CUDA_VISIBLE_DEVICES to this list is how it is placed. [] off CUDA."""
    if not device.startswith("cuda"):
        return []
    start = cuda_index(device)
    n = count if count is not None else max(1, len(visible) - start)
    if start + n > len(visible):
        raise RuntimeError(f"{device} with {n} GPU(s) needs GPUs {start}..{start + n - 1}, but "
                           f"{len(visible)} are visible ({','.join(visible) or 'none'})")
    return list(visible[start:start + n])


class Placement(NamedTuple):
    device: str  # as configured and shown in /health (cuda:N)
    dtype: str
    # The GPUs a vLLM engine is restricted to (CUDA_VISIBLE_DEVICES ids; vLLM's tensor parallel size is
    # their count); [] for torch engines and off CUDA.
    gpus: list[str]


def place(settings, key: str, handle, engine: Callable[[str], str] = lambda device: TORCH) -> Placement:
    """Device, dtype and GPUs for service `key` (global default, per-service override), recorded on its
    model handle for /health. `engine(device)` says what runs the model there:

    - TORCH: the service's GPU memory cap (torch's per-process fraction) is applied.
    - VLLM_SERVER, a child process: CUDA is not initialised here by placement (NVML is asked instead);
      its GPUs are returned for the child's environment (CUDA_VISIBLE_DEVICES), and its
      vllm_gpu_memory_utilization is its cap.

    bfloat16 asked for explicitly below compute capability 8.0 is refused for vLLM (which refuses it
    itself, after the download) and warned about for torch (emulated, slow).
    """
    device = resolve_device(settings.device_for(key))
    kind = engine(device)
    cfg = settings.service(key)
    capability = None
    if device.startswith("cuda"):
        capability = cuda_capability(device, init_cuda=kind == TORCH)
    dtype = dtype_for(settings.dtype_for(key), capability)
    if capability is not None and dtype == "bfloat16" and capability < BF16_MIN_CAPABILITY:
        why = (f"{key}: dtype bfloat16 on {device}, compute capability {capability[0]}.{capability[1]} "
               f"(bf16 needs {BF16_MIN_CAPABILITY[0]}.{BF16_MIN_CAPABILITY[1]})")
        if kind != TORCH:
            raise RuntimeError(f"{why}: vLLM refuses it; use float16 or dtype auto")
        log.warning(f"{why}: running it emulated, much slower than float16 (dtype auto picks float16 here)",
                    extra={"service": key, "device": device})
    gpus: list[str] = []
    if kind == TORCH:
        limit_gpu_memory(device, cfg.gpu_memory_fraction)
    else:
        if cfg.gpu_memory_fraction is not None:
            log.warning(f"{key}: gpu_memory_fraction is ignored with vLLM; its vllm_gpu_memory_utilization "
                        "is the cap", extra={"service": key})
        gpus = gpu_span(device, vllm_gpu_count(cfg), visible_gpus())
    handle.device, handle.dtype = device, dtype
    return Placement(device, dtype, gpus)
