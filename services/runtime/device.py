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
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("QWEN_DEVICE=cuda but CUDA is not available")
    if preference == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("QWEN_DEVICE=mps but MPS is not available")
    return preference


def resolve_dtype_name(preference: str, device: str) -> str:
    if preference != "auto":
        return preference
    return "bfloat16" if device == "cuda" else "float32"


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
