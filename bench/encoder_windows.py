"""Cost of the audio encoder with its 8-s attention windows applied vs the sdpa path that ignored them.

The encoder is qwen_asr's Qwen3ASRAudioEncoder built from the published Qwen3-ASR-1.7B audio config
(tests/fixtures/real: d_model 1024, 16 heads, n_window_infer 800), cut to a few layers so it runs on a
small CPU, random weights. For clips of 60, 120 and 300 s it times one forward with the old attention
(`sdpa`: one span over the whole clip) and with `qwen_windowed_sdpa`, and prints the ratios measured in
this run: windowed / dense at each length, and how each grows from 60 s to 300 s (x5 audio).

    .venv/bin/python bench/encoder_windows.py [--layers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, nargs="+", default=[60.0, 120.0, 300.0])
    args = ap.parse_args()

    import torch
    from qwen_asr.core.transformers_backend.configuration_qwen3_asr import Qwen3ASRAudioEncoderConfig
    from qwen_asr.core.transformers_backend.modeling_qwen3_asr import Qwen3ASRAudioEncoder

    from services.runtime.serving.encoder_attention import IMPLEMENTATION, window_audio_attention

    torch.manual_seed(0)
    real = json.loads((ROOT / "tests/fixtures/real/Qwen3-ASR-1.7B/config.json").read_text())
    audio = dict(real["thinker_config"]["audio_config"], encoder_layers=args.layers)
    config = Qwen3ASRAudioEncoderConfig(**audio)
    config._attn_implementation = "sdpa"
    encoder = Qwen3ASRAudioEncoder(config).eval()

    class Holder(torch.nn.Module):  # window_audio_attention looks for *AudioEncoder modules inside a model
        def __init__(self, enc):
            super().__init__()
            self.enc = enc

    configs = {id(m.config): m.config for m in encoder.modules() if hasattr(m, "config")}
    assert window_audio_attention(Holder(encoder)) == 1
    assert encoder.layers[0].self_attn.config._attn_implementation == IMPLEMENTATION

    def use(name: str) -> None:
        for cfg in configs.values():
            cfg._attn_implementation = name

    def once(seconds: float, name: str) -> float:
        use(name)
        frames = int(seconds * 100)
        features = torch.randn(config.num_mel_bins, frames, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            t0 = time.perf_counter()
            encoder(features, feature_lens=torch.tensor([frames]))
            return time.perf_counter() - t0

    once(min(args.seconds), "sdpa"), once(min(args.seconds), IMPLEMENTATION)  # warm-up
    runs: dict[tuple[float, str], list[float]] = {}
    for _ in range(args.repeats):  # interleaved, so load on a shared machine hits both alike
        for s in args.seconds:
            for name in ("sdpa", IMPLEMENTATION):
                runs.setdefault((s, name), []).append(once(s, name))
    dense = {s: statistics.median(runs[(s, "sdpa")]) for s in args.seconds}
    windowed = {s: statistics.median(runs[(s, IMPLEMENTATION)]) for s in args.seconds}

    print(f"audio encoder, published Qwen3-ASR-1.7B width, {args.layers} of 24 layers, CPU, "
          f"median of {args.repeats}")
    print(f"{'seconds':>8} {'dense s':>9} {'windowed s':>11} {'windowed/dense':>15}")
    for s in args.seconds:
        print(f"{s:8.0f} {dense[s]:9.3f} {windowed[s]:11.3f} {windowed[s] / dense[s]:15.2f}")
    lo, hi = min(args.seconds), max(args.seconds)
    print(f"growth {lo:.0f} s -> {hi:.0f} s (x{hi / lo:.0f} audio): dense x{dense[hi] / dense[lo]:.1f}, "
          f"windowed x{windowed[hi] / windowed[lo]:.1f}")


if __name__ == "__main__":
    main()
