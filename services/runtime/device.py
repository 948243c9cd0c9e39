"""Device (cuda > mps > cpu) and dtype (bf16 on cuda, fp32 elsewhere unless set) selection."""

from __future__ import annotations


def resolve_device(preference: str = "auto") -> str:
    import torch

    if preference == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {preference} requested but CUDA is not available")
        index = int(preference.split(":", 1)[1]) if ":" in preference else 0
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"device {preference} requested but only {torch.cuda.device_count()} GPU(s) visible")
    if preference == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("QWEN_DEVICE=mps but MPS is not available")
    return preference


def resolve_dtype_name(preference: str, device: str) -> str:
    if preference != "auto":
        return preference
    return "bfloat16" if device.startswith("cuda") else "float32"


def limit_gpu_memory(device: str, fraction: float | None) -> None:
    """Cap this process's allocations on `device` (models sharing one GPU); no-op off CUDA."""
    if fraction is None or not device.startswith("cuda"):
        return
    import torch

    index = int(device.split(":", 1)[1]) if ":" in device else 0
    torch.cuda.set_per_process_memory_fraction(fraction, index)


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def place(settings, key: str, handle) -> tuple[str, str]:
    """Device and dtype for service `key` (global default, per-service override), recorded on its
    model handle for /health, with the service's GPU memory cap applied."""
    device = resolve_device(settings.device_for(key))
    dtype = resolve_dtype_name(settings.dtype_for(key), device)
    limit_gpu_memory(device, settings.service(key).gpu_memory_fraction)
    handle.device, handle.dtype = device, dtype
    return device, dtype
