"""Fewer sampling steps at equal quality: l2, CA and PAR of a trained diffusion LCM on held-out
concept shards, for each solver and step count, with the time per denoiser call.

    OMP_WAIT_POLICY=PASSIVE python bench/solver_quality.py \\
        --checkpoint runs/two_tower_tiny/checkpoints/last.ckpt \\
        --data_dir shards/train --test_dir shards/test \\
        --configs ddim:40,dpmsolver++:10,dpmsolver++:20,ddim:10,ddim:20

Every configuration samples each held-out concept from its gold prefix (teacher-forced,
``predict_all``) with the same seeds, the checkpoint's guidance settings, and the normalizer
of ``--data_dir``. l2 and CA are computed as in validation (SONAR space; CA ranks the gold among
every concept of the batch, its two document neighbours excluded), PAR as in
``eval.metrics.concepts.paraphrasing``. The first configuration is the reference: the output
names the fewest-step configuration whose CA is within ``--ca_tolerance`` (relative, 1%) of it.
Each configuration also reports its mean l2 distance to the samples of ``--ode_ref`` (default
100-step DDIM) from the same initial noise: how far it is from the exact ODE solution, which
separates solvers even where CA does not.
Time per concept is that of the whole sampling loop per scored concept (all positions of a batch
are denoised together, so it is a throughput figure, not a batch-1 latency).
"""

from __future__ import annotations

import json as jsonlib  # main() has a parameter named json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from eval.metrics.concepts import paraphrasing  # noqa: E402
from lcm.metrics import sequence_contrastive_accuracy  # noqa: E402
from lcm.train.data import ConceptDataModule  # noqa: E402
from lcm.train.module import load_module  # noqa: E402


def parse_configs(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        solver, steps = item.split(":")
        out.append((solver, int(steps)))
    return out


@torch.no_grad()
def evaluate(
    module, batches, solver: str, steps: int, seed: int, ode_ref: list | None = None
) -> dict[str, float]:
    """Metrics of one configuration; ``ode_ref``: per batch, the reference sampler's
    predictions from the same initial noise (adds ``to_ode_ref``), else they are returned."""
    objective = module.eval_objective()
    l2s, cas, pars, secs, n_total, refs, preds = [], [], [], 0.0, 0, [], []
    for i, batch in enumerate(batches):
        batch = module.insert_separator(batch)
        g = torch.Generator().manual_seed(seed + i)
        t0 = time.perf_counter()
        pred = objective.predict_all(batch, g, num_inference_steps=steps, solver=solver)
        secs += time.perf_counter() - t0
        w = batch["mask"] & batch["loss_mask"]
        if not objective.predicts_first_concept:
            w[:, 0] = False
        pred_s = module.normalizer.denormalize(pred)
        x_s = module.normalizer.denormalize(batch["x"])
        l2s.append((pred_s[w] - x_s[w]).norm(dim=-1))
        ca = sequence_contrastive_accuracy(pred_s, x_s, w, batch["mask"])[w]
        cas.append(ca[torch.isfinite(ca)])
        par = paraphrasing(pred_s, x_s, batch["mask"], w)[w]
        pars.append(par[torch.isfinite(par)])
        n_total += int(w.sum())
        preds.append(pred_s)
        if ode_ref is not None:
            refs.append((pred_s[w] - ode_ref[i][w]).norm(dim=-1))
    if ode_ref is None:
        return preds
    return {
        "to_ode_ref": torch.cat(refs).mean().item(),
        "l2": torch.cat(l2s).mean().item(),
        "ca": torch.cat(cas).mean().item(),
        "par": torch.cat(pars).mean().item(),
        "ms_per_concept": 1000 * secs / max(n_total, 1),
        "concepts": n_total,
    }


def main(
    checkpoint: str,
    data_dir: str,
    test_dir: str,
    configs: str = "ddim:40,dpmsolver++:10,dpmsolver++:20,ddim:10,ddim:20",
    max_batches: int = 8,
    max_seq_len: int = 64,
    max_concepts_per_batch: int = 1024,
    seeds: int = 2,
    ca_tolerance: float = 0.01,
    ode_ref: str = "ddim:100",
    threads: int = 0,
    json: str | None = None,
) -> None:
    """DDIM against DPM-Solver++(2M) at several step counts on held-out concept shards.

    Args:
        checkpoint: a trained diffusion checkpoint.
        data_dir: the training shards (normalizer).
        test_dir: held-out shards.
        configs: ``solver:steps`` configurations, comma-separated.
        max_batches: held-out batches scored.
        max_seq_len: concepts per example.
        max_concepts_per_batch: concepts per batch.
        seeds: sampling seeds, averaged.
        ca_tolerance: the CA loss within which fewer steps count as "equal quality".
        ode_ref: a fine sampler whose samples (same seeds, so the same initial noise) stand for
            the exact ODE solution; each configuration reports its mean l2 distance to them.
        threads: torch threads (0: torch's default).
        json: write the results here.
    """
    args = SimpleNamespace(**locals())
    if args.threads:
        torch.set_num_threads(args.threads)
    module = load_module(args.checkpoint).eval()
    dm = ConceptDataModule(
        data_dir=args.data_dir,
        test_dir=args.test_dir,
        max_seq_len=args.max_seq_len,
        max_concepts_per_batch=args.max_concepts_per_batch,
    )
    dm.setup("test")
    batches = []
    for i, b in enumerate(dm.test_dataloader()):
        if i >= args.max_batches:
            break
        batches.append(b)
    s = module.eval_objective().sampling
    print(
        f"{args.checkpoint}: {len(batches)} held-out batches of {args.test_dir}, guidance "
        f"{s.guidance_scale}, rescale {s.guidance_rescale}, init noise {s.init_noise_scale}, "
        f"{args.seeds} seed(s), {torch.get_num_threads()} thread(s)"
    )
    ref_solver, ref_steps = parse_configs(args.ode_ref)[0]
    ode = [evaluate(module, batches, ref_solver, ref_steps, 1000 * k) for k in range(args.seeds)]
    results = []
    for solver, steps in parse_configs(args.configs):
        runs = [
            evaluate(module, batches, solver, steps, 1000 * k, ode[k]) for k in range(args.seeds)
        ]
        r = {k: statistics.mean(run[k] for run in runs) for k in runs[0]}
        r.update(solver=solver, steps=steps)
        results.append(r)
        print(
            f"  {solver:12s} {steps:3d} steps  l2 {r['l2']:.4f}  CA {r['ca']:.4f}  "
            f"PAR {r['par']:.4f}  l2 to {args.ode_ref} {r['to_ode_ref']:.4f}  "
            f"{r['ms_per_concept']:.3f} ms/concept",
            flush=True,
        )
    ref = results[0]
    ok = [r for r in results if r["ca"] >= ref["ca"] * (1 - args.ca_tolerance)]
    best = min(ok, key=lambda r: (r["steps"], r["ms_per_concept"]))
    print(
        f"reference {ref['solver']}:{ref['steps']} CA {ref['ca']:.4f}; fewest steps within "
        f"{100 * args.ca_tolerance:.0f}% CA: {best['solver']}:{best['steps']} "
        f"(CA {best['ca']:.4f}, {ref['ms_per_concept'] / best['ms_per_concept']:.2f}x faster "
        "per concept)"
    )
    if args.json:
        record = {"args": vars(args), "results": results}
        Path(args.json).write_text(jsonlib.dumps(record, indent=2))


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
