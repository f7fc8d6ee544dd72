"""Generation speed per family, fast paths against slow ones, side by side in one run.

    OMP_WAIT_POLICY=PASSIVE python bench/generate_throughput.py [--preset tiny] [--device cpu]

For each family: concepts/s and latency per concept with the KV cache against recomputing the
context for every concept; for Two-Tower also the per-concept cross-attention K/V reuse against
recomputing it at every denoising step. Diffusion uses the paper's settings (40 steps,
guidance 3). Untrained weights: speed does not depend on them. Compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lcm.generation import SamplingConfig, generate, make_step  # noqa: E402
from lcm.models import BaseLCMConfig, OneTowerConfig, TwoTowerConfig  # noqa: E402
from lcm.normalizer import RobustNormalizer  # noqa: E402


def bench(model, prompts, norm, n_new, repeats, **step_kw) -> float:
    """Median seconds to generate ``n_new`` concepts for every prompt."""
    times = []
    for r in range(repeats + 1):
        step = make_step(model, sampling=SamplingConfig(), **step_kw)
        g = torch.Generator(device=prompts[0].device).manual_seed(0)
        t0 = time.perf_counter()
        generate(step, prompts, norm, max_new_concepts=n_new, repeat_threshold=2.0, generator=g)
        if prompts[0].is_cuda:
            torch.cuda.synchronize()
        if r:  # the first run is a warm-up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--sonar_dim", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--context", type=int, default=32, help="prompt concepts per document")
    ap.add_argument("--new", type=int, default=8, help="concepts generated per document")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device(args.device)
    D = args.sonar_dim
    norm = RobustNormalizer(D).to(dev)
    prompts = [torch.randn(args.context, D, device=dev) for _ in range(args.batch)]
    n = args.batch * args.new
    print(
        f"preset {args.preset}, D={D}, batch {args.batch}, context {args.context}, "
        f"{args.new} new concepts each, device {args.device}"
    )
    for cfg in (BaseLCMConfig, TwoTowerConfig, OneTowerConfig):
        model = cfg.from_name(args.preset, sonar_dim=D).build(device=dev).eval()
        name = cfg.__name__.replace("Config", "")
        fast = bench(model, prompts, norm, args.new, args.repeats)
        slow = bench(model, prompts, norm, args.new, args.repeats, use_cache=False)
        line = (
            f"{name:10s} cached {n / fast:8.1f} concepts/s ({1000 * fast / args.new:7.1f} "
            f"ms/concept)  uncached {n / slow:8.1f} concepts/s  KV-cache speed-up "
            f"{slow / fast:5.2f}x"
        )
        if cfg is TwoTowerConfig:
            recompute = bench(model, prompts, norm, args.new, args.repeats, reuse_context=False)
            line += f"  context-reuse speed-up {recompute / fast:5.2f}x"
        print(line)


if __name__ == "__main__":
    main()
