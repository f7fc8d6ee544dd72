"""Generation speed per family, fast paths against slow ones, side by side in one run.

    OMP_WAIT_POLICY=PASSIVE python bench/generate_throughput.py [--preset tiny] [--device cpu]
    OMP_WAIT_POLICY=PASSIVE python bench/generate_throughput.py --two_tower_denoiser true \
        --preset small --batch 1 --new 1 --threads 1

Default: for each family, concepts/s and latency per concept with the KV cache against
recomputing the context for every concept; for Two-Tower also the per-concept cross-attention
K/V reuse against recomputing it at every denoising step; with ``--compile true`` also the
cached step through ``torch.compile`` against eager. Ratios are medians over rounds of each
round's side-by-side ratio, with a 95% percentile-bootstrap interval of that median and the
number of rounds the faster variant won (and the ratio of each variant's fastest round). The
KV cache saves the diffusion families one prefill per concept next to 40 denoising calls, so
at the default tiny setting its gain is within the machine's noise; a longer context shows it:
``--preset small --batch 1 --context 128 --new 2 --families TwoTower,OneTower --kv_only true``.
``--count_work true`` counts instead of timing: FLOPs and aten operators of one more concept
with and without the cache (exact, whatever the load).
Diffusion uses the paper's settings
(40 steps, guidance 3).

``--two_tower_denoiser``: Two-Tower time per concept, the old denoiser path (``fast=False``)
against the fast one, with each optimization added in turn (timestep/AdaLN table, fused diagonal
self-attention, (in, out) weight layout, the query/output projections folded into a short
context's keys/values, oneDNN-packed weights for the 2-row products), interleaved round by
round so load drifts hit all variants alike, and
the max |difference| of each variant's concepts from the old path's. Every fast variant gives the
unconditional rows of guidance their constant cross-attention output (no product for them).

Untrained weights: speed does not depend on them (the AdaLN projections are filled with random
values so that the outputs compared are not trivially equal). Compare ratios, not absolutes.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lcm.generation import SamplingConfig, generate, make_step  # noqa: E402
from lcm.models import BaseLCMConfig, OneTowerConfig, TwoTowerConfig  # noqa: E402
from lcm.normalizer import RobustNormalizer  # noqa: E402


def paired(times: dict[str, list[float]], slow: str, fast: str) -> float:
    """Median over rounds of slow/fast, each ratio from one round's side-by-side runs: load
    drifts between rounds cancel in the ratio (a ratio of two medians does not pair them)."""
    return statistics.median(s / f for s, f in zip(times[slow], times[fast], strict=True))


def ratio_ci(
    times: dict[str, list[float]], slow: str, fast: str, n_boot: int = 4000, level: float = 0.95
) -> tuple[float, float, float, float]:
    """The paired speed-up with its uncertainty: the median over rounds of slow/fast (each
    ratio from one round's side-by-side runs), a percentile-bootstrap interval of that median
    (rounds resampled with replacement, ``n_boot`` times, fixed seed), and the share of rounds
    in which ``fast`` was faster. On a shared machine single rounds swing by +-10%; a verdict
    "never slower" needs the interval's lower end, not one ratio, at or above 1."""
    ratios = torch.tensor(
        [s / f for s, f in zip(times[slow], times[fast], strict=True)], dtype=torch.float64
    )  # (R,)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(len(ratios), (n_boot, len(ratios)), generator=g)  # (n_boot, R)
    meds = ratios[idx].quantile(0.5, dim=1)  # (n_boot,) medians, as statistics.median
    lo, hi = torch.quantile(
        meds, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=meds.dtype)
    )
    wins = float((ratios > 1).double().mean())
    return statistics.median(ratios.tolist()), float(lo), float(hi), wins


def fmt_ratio(times: dict[str, list[float]], slow: str, fast: str) -> str:
    """``1.05x [0.98, 1.10] (faster in 7/10 rounds)``: :func:`ratio_ci` as printed."""
    med, lo, hi, wins = ratio_ci(times, slow, fast)
    r = len(times[slow])
    return f"{med:5.2f}x [95% CI {lo:4.2f}, {hi:4.2f}] (faster in {round(wins * r)}/{r} rounds)"


def best(times: dict[str, list[float]], slow: str, fast: str) -> float:
    """Ratio of the two variants' fastest rounds: other jobs' load only ever adds time, so the
    fastest round of each is its least disturbed one (a second estimate beside ``paired``)."""
    return min(times[slow]) / min(times[fast])


def bench(
    model, prompts, norm, n_new, repeats, variants: dict[str, dict]
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Median seconds to generate ``n_new`` concepts for every prompt, per variant (make_step
    options), and every round's seconds. Variants run interleaved, round by round, in
    alternating order, so that load swings on a shared machine hit them alike (measured in
    blocks, a 3-8% difference such as One-Tower's KV cache flipped sign from run to run)."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(repeats + 1):
        for name in names if r % 2 == 0 else names[::-1]:
            step = make_step(model, sampling=SamplingConfig(), **variants[name])
            g = torch.Generator(device=prompts[0].device).manual_seed(0)
            t0 = time.perf_counter()
            generate(step, prompts, norm, max_new_concepts=n_new, repeat_threshold=2.0, generator=g)
            if prompts[0].is_cuda:
                torch.cuda.synchronize()
            if r:  # the first round is a warm-up
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, times


def work_per_concept(
    model, prompts, norm, variants: dict[str, dict], n: tuple[int, int] = (2, 4)
) -> dict[str, tuple[float, float]]:
    """Per variant, the work of one more generated concept per document: (FLOPs counted by
    ``torch.utils.flop_counter``, aten operators dispatched), as the difference between
    generating ``n[1]`` and ``n[0]`` concepts divided by ``n[1] - n[0]``. Unlike a timing it is
    exact and does not depend on the machine's load. A warm-up call first builds the plans a
    model keeps across calls (Two-Tower's timestep/AdaLN table), so neither variant is charged
    for them."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    class OpCount(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func] += 1
            return func(*args, **(kwargs or {}))

    def run(kw: dict, k: int) -> tuple[int, int]:
        step = make_step(model, sampling=SamplingConfig(), **kw)
        g = torch.Generator(device=prompts[0].device).manual_seed(0)
        with FlopCounterMode(display=False) as flops, OpCount() as ops:
            generate(step, prompts, norm, max_new_concepts=k, repeat_threshold=2.0, generator=g)
        return flops.get_total_flops(), sum(ops.ops.values())

    out = {}
    for name, kw in variants.items():
        run(kw, 1)  # warm-up: plans the model keeps
        (f0, o0), (f1, o1) = run(kw, n[0]), run(kw, n[1])
        docs = len(prompts) * (n[1] - n[0])
        out[name] = ((f1 - f0) / docs, (o1 - o0) / docs)
    return out


DENOISER_VARIANTS = {
    "old path (fast=False)": dict(fast=False),
    "+ timestep/AdaLN table": dict(
        fast_options=dict(diagonal=False, transposed=False, onednn=False)
    ),
    "+ fused diagonal attn": dict(fast_options=dict(diagonal=True, transposed=False, onednn=False)),
    "+ (in, out) weights": dict(
        fast_options=dict(diagonal=True, transposed=True, onednn=False, fold_cross=False)
    ),
    "+ folded cross-attn": dict(fast_options=dict(diagonal=True, transposed=True, onednn=False)),
    "+ oneDNN packed (default)": dict(),
    "+ torch.compile": dict(fast_options=dict(diagonal=True, transposed=True), compile=True),
}


def bench_denoiser(args, dev: torch.device) -> None:
    """Old vs fast Two-Tower denoising, each optimization's share, and output differences."""
    D = args.sonar_dim
    model = TwoTowerConfig.from_name(args.preset, sonar_dim=D).build(device=dev).eval()
    with torch.no_grad():  # non-zero AdaLN (zero-initialized) so the outputs differ if wrong
        for blk in model.den_layers:
            blk.modulation.proj.weight.normal_(0.0, 0.02)
    norm = RobustNormalizer(D).to(dev)
    prompts = [torch.randn(args.context, D, device=dev) for _ in range(args.batch)]
    sampling = SamplingConfig(num_inference_steps=args.steps, guidance_scale=args.guidance)
    n = args.batch * args.new
    t0 = time.perf_counter()
    for kw in DENOISER_VARIANTS.values():
        if kw.get("fast", True):
            opts = {k: v for k, v in kw.get("fast_options", {}).items() if k != "fold_cross"}
            model.denoiser_plan(100, **opts)
    print(f"plans (all variants) built once in {time.perf_counter() - t0:.2f} s")
    variants = dict(DENOISER_VARIANTS)
    if not args.compile:
        variants.pop("+ torch.compile")
    else:  # compile outside the timed rounds (the first call compiles)
        t0 = time.perf_counter()
        step = make_step(model, sampling=sampling, **variants["+ torch.compile"])
        generate(step, prompts, norm, max_new_concepts=args.new, repeat_threshold=2.0)
        print(f"torch.compile of the fast denoiser: {time.perf_counter() - t0:.1f} s")
    times: dict[str, list[float]] = {k: [] for k in variants}
    outs: dict[str, torch.Tensor] = {}
    names = list(variants)
    for r in range(args.repeats + 1):  # round 0 is a warm-up; order alternates round by round
        for name in names if r % 2 == 0 else names[::-1]:
            kw = variants[name]
            step = make_step(model, sampling=sampling, **kw)
            g = torch.Generator(device=dev).manual_seed(0)
            t0 = time.perf_counter()
            out = generate(
                step, prompts, norm, max_new_concepts=args.new, repeat_threshold=2.0, generator=g
            )
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if r:
                times[name].append(time.perf_counter() - t0)
            outs[name] = torch.cat(out.concepts)
    base_name = next(iter(variants))
    base = statistics.median(times[base_name])
    print(
        f"Two-Tower {args.preset}, batch {args.batch}, {args.steps} DDIM steps, guidance "
        f"{args.guidance}, context {args.context}, {args.new} concept(s) per document, "
        f"{torch.get_num_threads()} thread(s), medians of {args.repeats} rounds; speed-up vs old:"
        " median of the rounds' paired ratios with a bootstrap interval"
    )
    prev = base
    for name, ts in times.items():
        med = statistics.median(ts)
        diff = (outs[name] - outs[base_name]).abs().max().item()
        print(
            f"  {name:24s} {1000 * med / n:9.1f} ms/concept  speed-up vs old "
            f"{fmt_ratio(times, base_name, name)}  step share {prev / med:5.2f}x  "
            f"max|diff| {diff:.2e}"
        )
        prev = med
    for name, ts in times.items():
        ratios = ", ".join(f"{b / t:.2f}" for b, t in zip(times[base_name], ts, strict=True))
        print(f"  per-round speed-up vs old, {name}: {ratios}")


def main(
    preset: str = "tiny",
    sonar_dim: int = 1024,
    device: str = "cpu",
    batch: int = 4,
    context: int = 32,
    new: int = 8,
    repeats: int = 2,
    threads: int = 0,
    two_tower_denoiser: bool = False,
    compile: bool = False,
    steps: int = 40,
    guidance: float = 3.0,
    families: str = "BaseLCM,TwoTower,OneTower",
    kv_only: bool = False,
    count_work: bool = False,
) -> None:
    """Generation throughput per family: KV cache, Two-Tower context reuse, fast denoiser.

    Args:
        preset: model preset of every family (``tiny``, ``small``, ...).
        sonar_dim: concept width.
        device: torch device.
        batch: documents generated together.
        context: prompt concepts per document.
        new: concepts generated per document.
        repeats: timed repeats (the median is reported).
        threads: torch threads (0: torch's default).
        two_tower_denoiser: instead, time the Two-Tower denoiser's old path against each
            addition of the fast path, cumulatively.
        compile: also time the cached step through ``torch.compile`` (``StepOptions.compile``:
            compiled before the timed rounds; against eager, in the same rounds); with
            ``two_tower_denoiser``, the fast denoiser.
        steps: DDIM steps (``two_tower_denoiser``).
        guidance: classifier-free guidance scale (``two_tower_denoiser``).
        families: comma-separated families of the default bench (BaseLCM, TwoTower, OneTower).
        kv_only: only the KV cache (cached vs uncached), without Two-Tower's context-reuse
            and fast-denoiser variants (e.g. for the ``small`` preset at a long context).
        count_work: instead of timing, count the work of one more concept per document with
            and without the KV cache (FLOPs and aten operators dispatched; exact, independent
            of the machine's load).
    """
    args = SimpleNamespace(**locals())
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    if args.two_tower_denoiser:
        bench_denoiser(args, dev)
        return
    D = args.sonar_dim
    norm = RobustNormalizer(D).to(dev)
    prompts = [torch.randn(args.context, D, device=dev) for _ in range(args.batch)]
    n = args.batch * args.new
    print(
        f"preset {args.preset}, D={D}, batch {args.batch}, context {args.context}, "
        f"{args.new} new concepts each, device {args.device}"
    )
    for cfg in (BaseLCMConfig, TwoTowerConfig, OneTowerConfig):
        name = cfg.__name__.replace("Config", "")
        if name not in args.families.split(","):
            continue
        model = cfg.from_name(args.preset, sonar_dim=D).build(device=dev).eval()
        variants = {"cached": {}, "uncached": dict(use_cache=False)}
        if args.count_work:
            w = work_per_concept(model, prompts, norm, variants)
            (fc, oc), (fu, ou) = w["cached"], w["uncached"]
            print(
                f"{name:10s} per concept and document: cached {fc / 1e6:9.2f} MFLOP "
                f"{oc:8.0f} ops, uncached {fu / 1e6:9.2f} MFLOP {ou:8.0f} ops; uncached / "
                f"cached: FLOPs {fu / fc:5.2f}x, ops {ou / oc:5.3f}x"
            )
            continue
        if cfg is TwoTowerConfig and not args.kv_only:
            variants["recompute_kv"] = dict(reuse_context=False, fast=False)
            variants["cached_general"] = dict(fast=False)
        if args.compile:  # compiled on first use: outside the timed rounds
            variants["compiled"] = dict(compile=True)
            t0 = time.perf_counter()
            outs = {}
            for k in ("cached", "compiled"):
                step = make_step(model, sampling=SamplingConfig(), **variants[k])
                g = torch.Generator(device=dev).manual_seed(0)
                out = generate(step, prompts, norm, args.new, repeat_threshold=2.0, generator=g)
                outs[k] = torch.cat(out.concepts)
            diff = (outs["compiled"] - outs["cached"]).abs().max().item()
            print(f"{name}: torch.compile + first run {time.perf_counter() - t0:.1f} s")
        t, rounds = bench(model, prompts, norm, args.new, args.repeats, variants)
        fast, slow = t["cached"], t["uncached"]
        line = (
            f"{name:10s} cached {n / fast:8.1f} concepts/s ({1000 * fast / args.new:7.1f} "
            f"ms/concept)  uncached {n / slow:8.1f} concepts/s  KV-cache speed-up "
            f"{fmt_ratio(rounds, 'uncached', 'cached')} (fastest rounds "
            f"{best(rounds, 'uncached', 'cached'):4.2f}x)"
        )
        if cfg is TwoTowerConfig and not args.kv_only:
            line += (
                f"  context-reuse speed-up {paired(rounds, 'recompute_kv', 'cached_general'):5.2f}x"
                f"  fast denoiser speed-up {paired(rounds, 'cached_general', 'cached'):5.2f}x"
            )
        if args.compile:
            line += (
                f"  compiled {1000 * t['compiled'] / args.new:7.1f} ms/concept, speed-up vs "
                f"eager cached {paired(rounds, 'cached', 'compiled'):5.2f}x (fastest rounds "
                f"{best(rounds, 'cached', 'compiled'):4.2f}x; max|diff| {diff:.1e})"
            )
        print(line)


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
