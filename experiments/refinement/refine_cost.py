"""Cost of one generated concept: the recurrent refiner at its exit step against Two-Tower
diffusion (40 DDIM steps with classifier-free guidance), same contexts, side by side in one run.

    OMP_WAIT_POLICY=PASSIVE python experiments/refinement/refine_cost.py [--preset tiny]
        [--device cpu] [--exit_steps 12] [--refiner_state refiner.pt]

Both models generate ``--new`` concepts after the same random prompts through the shared
generation loop (:func:`lcm.generation.generate` with each family's ``make_step``, KV-cached
contexts; the refiner's step reuses the core's cross-attention K/V of earlier concepts). Per
generated concept:

- layer evaluations per document: the contextualizer runs once on the new concept
  (``ctx_layers``) in both models; then the refiner applies its ``core_layers`` core ``exit``
  times, and Two-Tower runs its ``den_layers`` denoiser 40 times on a batch that guidance doubles
  (conditional + unconditional rows), i.e. 2 x 40 x den_layers row-layers;
- FLOPs counted by ``torch.utils.flop_counter`` over the whole generation, prefill excluded;
- wall time per concept (median of ``--repeats`` after a warm-up).

The adaptive exit also reads out the prediction (PostNet) after every iteration to measure its
movement; that cost is in the FLOPs and the wall time but not in the layer count (with
``--exit_steps`` only the final state is read out).

The refiner's exit step is *measured* on these contexts with its adaptive exit rule (mean over
every generated concept), unless ``--exit_steps`` fixes r. Untrained weights by default (speed
does not depend on them, but an untrained refiner's exit step is not a trained one's: pass a
trained network's ``state_dict`` with ``--refiner_state``, or ``--exit_steps`` a measured value).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from lcm.generation import NextConceptStep, SamplingConfig, generate, make_step  # noqa: E402
from lcm.models import RefinerConfig, TwoTowerConfig  # noqa: E402
from lcm.normalizer import RobustNormalizer  # noqa: E402
from lcm.objectives.refiner import ExitRule, RefinerObjective  # noqa: E402


def run(make, prompts, norm, n_new: int, seed: int = 0):
    step = make()
    g = torch.Generator(device=prompts[0].device).manual_seed(seed)
    out = generate(step, prompts, norm, max_new_concepts=n_new, repeat_threshold=2.0, generator=g)
    if prompts[0].is_cuda:
        torch.cuda.synchronize()
    return out


def seconds(make, prompts, norm, n_new: int, repeats: int) -> float:
    """Median seconds to generate ``n_new`` concepts for every prompt (first run = warm-up)."""
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        run(make, prompts, norm, n_new)
        if r:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def flops_per_concept(make, prompts, norm, n_new: int) -> float:
    """FLOPs of generating n_new concepts per document minus the prefill, per concept."""
    x = torch.stack([norm.normalize(p) for p in prompts])
    mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    with FlopCounterMode(display=False) as prefill:
        make().start(x, mask)
    with FlopCounterMode(display=False) as total:
        run(make, prompts, norm, n_new)
    return (total.get_total_flops() - prefill.get_total_flops()) / (len(prompts) * n_new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    ap.add_argument("--sonar_dim", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--context", type=int, default=32, help="prompt concepts per document")
    ap.add_argument("--new", type=int, default=8, help="concepts generated per document")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--exit_steps", type=int, default=None, help="fixed refiner r (no exit)")
    ap.add_argument("--exit_threshold", type=float, default=ExitRule.exit_threshold, help="tau")
    ap.add_argument("--exit_patience", type=int, default=ExitRule.exit_patience, help="m")
    ap.add_argument("--max_iterations", type=int, default=ExitRule.max_iterations)
    ap.add_argument("--refiner_state", default=None, help="state_dict of a trained refiner")
    ap.add_argument("--steps", type=int, default=40, help="Two-Tower DDIM steps")
    ap.add_argument("--guidance", type=float, default=3.0, help="Two-Tower guidance scale")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device(args.device)
    D = args.sonar_dim
    norm = RobustNormalizer(D).to(dev)
    prompts = [torch.randn(args.context, D, device=dev) for _ in range(args.batch)]

    rcfg = RefinerConfig.from_name(args.preset, sonar_dim=D)
    refiner = rcfg.build(device=dev).eval()
    if args.refiner_state:
        refiner.load_state_dict(torch.load(args.refiner_state, map_location=dev))
    rule = ExitRule(args.exit_threshold, args.exit_patience, args.max_iterations)
    objective = RefinerObjective(refiner, exit_rule=rule).eval()
    tcfg = TwoTowerConfig.from_name(args.preset, sonar_dim=D)
    two_tower = tcfg.build(device=dev).eval()
    sampling = SamplingConfig(num_inference_steps=args.steps, guidance_scale=args.guidance)
    reps = 2 if args.guidance != 1.0 else 1

    def make_refiner() -> NextConceptStep:
        return make_step(objective, num_iterations=args.exit_steps, exit_rule=rule)

    def make_two_tower() -> NextConceptStep:
        return make_step(two_tower, sampling=sampling)

    with torch.inference_mode():
        measured = run(make_refiner, prompts, norm, args.new)
        exits = torch.cat(measured.extras["exit_step"]).float()
        mean_exit = float(exits.mean())
        t_ref = seconds(make_refiner, prompts, norm, args.new, args.repeats)
        t_tt = seconds(make_two_tower, prompts, norm, args.new, args.repeats)
        f_ref = flops_per_concept(make_refiner, prompts, norm, args.new)
        f_tt = flops_per_concept(make_two_tower, prompts, norm, args.new)

    n = args.batch * args.new
    layers_ref = rcfg.ctx_layers + mean_exit * rcfg.core_layers
    layers_tt = tcfg.ctx_layers + reps * args.steps * tcfg.den_layers
    how = f"fixed r={args.exit_steps}" if args.exit_steps else "measured adaptive exit"
    print(
        f"preset {args.preset}, D={D}, batch {args.batch}, context {args.context}, {args.new} new "
        f"concepts each, device {args.device}; refiner {refiner.param_count():,} params, "
        f"Two-Tower {two_tower.param_count():,} params"
    )
    print(
        f"refiner exit ({how}, tau={rule.exit_threshold:g}, m={rule.exit_patience}, "
        f"cap {rule.max_iterations}): mean {mean_exit:.2f}, min {int(exits.min())}, "
        f"max {int(exits.max())} over {exits.numel()} concepts"
    )
    head = f"{'per generated concept':38s} {'layer evals':>12s} {'MFLOP':>10s} {'ms':>9s}"
    print(head)
    print("-" * len(head))
    rows = [
        (
            f"refiner {rcfg.ctx_layers} ctx + {mean_exit:.2f} x {rcfg.core_layers} core",
            layers_ref,
            f_ref,
            1000 * t_ref / n,
        ),
        (
            f"Two-Tower {tcfg.ctx_layers} ctx + {reps}x{args.steps}x{tcfg.den_layers} den",
            layers_tt,
            f_tt,
            1000 * t_tt / n,
        ),
    ]
    for name, layers, flops, ms in rows:
        print(f"{name:38s} {layers:12.1f} {flops / 1e6:10.2f} {ms:9.3f}")
    print(
        f"{'ratio Two-Tower / refiner':38s} {layers_tt / layers_ref:11.1f}x "
        f"{f_tt / f_ref:9.1f}x {t_tt / t_ref:8.1f}x"
    )
    if not args.exit_steps:
        print("(adaptive exit: FLOPs and ms include the per-iteration readout that tests movement)")


if __name__ == "__main__":
    main()
