"""GPU sharing between the model services one deployment runs side by side, judged from settings alone.

Each service on a GPU declares a share of its memory: torch engines by QWEN_<SVC>_GPU_MEMORY_FRACTION
(a cap on that process's allocations; unset: uncapped), vLLM engines by their
QWEN_<SVC>_VLLM_GPU_MEMORY_UTILIZATION (vLLM takes that share of the GPU's total memory up front for weights
and KV cache, and refuses to start when that much is not free). The captioner's vLLM spans
vllm_tensor_parallel_size GPUs from its device on (unset: every visible GPU), the rest one GPU each
(`auto` and `cuda` are the first). On one GPU:

- declared shares over 1: an error — the deployment is refused at start (the gateway raises);
- a service without a cap next to others: a warning in the log and in /health's `placement` — it can take
  the memory the others need (`make serve` on one GPU: the captioner's vLLM at 0.95 beside five uncapped
  models);
- capped shares up to 1 (the seed's ASR 0.45 + TTS 0.45 on one T4): fine.

Pure: the caller passes the services that run in its process tree and the visible GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from services.runtime.serving.device import cuda_index, gpu_span, vllm_gpu_count
from services.runtime.serving.vllm_server import uses_vllm


@dataclass(frozen=True)
class Claim:
    service: str
    gpus: tuple[str, ...]  # CUDA_VISIBLE_DEVICES ids
    fraction: float | None  # share of each of those GPUs' memory; None: uncapped
    setting: str  # the setting that declares it


@dataclass(frozen=True)
class Finding:
    level: str  # "error" (refused) | "warning"
    gpu: str
    message: str


def colocated(settings, keys: Sequence[str]) -> list[str]:
    """Of the enabled `keys`, those this process tree runs (the others are reached at their URL)."""
    return [k for k in keys if not settings.service(k).url]


def claims(settings, keys: Sequence[str], visible: Sequence[str]) -> list[Claim]:
    """What each of `keys` takes of which GPU. Services off CUDA, or placed on a GPU that is not there
    (their own load refuses that), claim nothing."""
    out = []
    for key in keys:
        preference = settings.device_for(key)
        if preference in ("cpu", "mps") or not visible:
            continue
        device = "cuda" if preference == "auto" else preference
        if cuda_index(device) >= len(visible):
            continue
        cfg = settings.service(key)
        env = f"QWEN_{key.upper()}_"
        if uses_vllm(cfg, device, settings):
            try:
                gpus = gpu_span(device, vllm_gpu_count(cfg), visible)
            except RuntimeError:  # more GPUs than there are: the service's load says so
                continue
            out.append(Claim(key, tuple(gpus), cfg.vllm_gpu_memory_utilization, env + "VLLM_GPU_MEMORY_UTILIZATION"))
        else:
            out.append(Claim(key, (visible[cuda_index(device)],), cfg.gpu_memory_fraction, env + "GPU_MEMORY_FRACTION"))
    return out


def check(settings, keys: Sequence[str], visible: Sequence[str]) -> list[Finding]:
    """Overlapping placements of `keys` (the services run side by side) on the `visible` GPUs."""
    by_gpu: dict[str, list[Claim]] = {}
    for claim in claims(settings, keys, visible):
        for gpu in claim.gpus:
            by_gpu.setdefault(gpu, []).append(claim)
    findings = []
    for gpu, shared in by_gpu.items():
        if len(shared) < 2:
            continue
        parts = ", ".join(f"{c.service} ({c.fraction:g}, {c.setting})" if c.fraction is not None
                          else f"{c.service} (uncapped)" for c in shared)
        declared = sum(c.fraction for c in shared if c.fraction is not None)
        uncapped = [c.service for c in shared if c.fraction is None]
        if declared > 1 + 1e-9:
            findings.append(Finding("error", gpu, (
                f"GPU {gpu} is over-committed: {parts} declare {declared:.2f} of its memory. Lower those "
                "shares or place services on other GPUs (QWEN_<SVC>_DEVICE=cuda:N)")))
        elif uncapped:
            findings.append(Finding("warning", gpu, (
                f"GPU {gpu} is shared by {parts}: {', '.join(uncapped)} can take the memory the others need "
                "(a vLLM engine takes its share up front and fails to start without it). Cap them "
                "(QWEN_<SVC>_GPU_MEMORY_FRACTION) or place them on other GPUs (QWEN_<SVC>_DEVICE=cuda:N)")))
    return findings


def refuse(findings: Sequence[Finding]) -> None:
    errors = [f.message for f in findings if f.level == "error"]
    if errors:
        raise RuntimeError("GPU placement refused: " + "; ".join(errors))
