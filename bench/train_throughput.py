"""Training throughput per family and preset: concepts/s, peak memory, and (GPU) MFU.

    OMP_WAIT_POLICY=PASSIVE python bench/train_throughput.py --presets tiny
    OMP_WAIT_POLICY=PASSIVE python bench/train_throughput.py --families two_tower --compile true
    python bench/train_throughput.py --device cuda --presets small,1.6B --precision bf16

One optimizer step = objective loss, backward, AdamW step, on a random batch of ``--batch``
documents of ``--seq`` concepts (the objectives' own loss code, not a stand-in). Model FLOPs per
concept are estimated as 6 x parameters (forward + backward, weights only); MFU divides the
achieved FLOP/s by ``--peak_tflops`` (H100 SXM dense bf16: 989). Untrained weights; compare
numbers from one run only.

``--compile``: each family/preset also runs with the network compiled the way training compiles
it (:func:`lcm.train.compile.compile_network`, ``torch.compile`` through ``nn.Module.compile``),
after its compilation warm-up, steps alternating with the eager run's, and prints the
eager/compiled step-time ratio (median over steps of adjacent steps' ratios) and the largest
loss difference over the steps. ``--compile_optimizer`` adds a run that also compiles the AdamW
update (:func:`lcm.train.compile.compile_optimizer`); ``--compile_loss`` (Base-LCM) one that
compiles the loss with the network (:func:`lcm.train.compile.compile_loss`).
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lcm.models import FAMILIES  # noqa: E402
from lcm.objectives import MSEObjective, OneTowerDiffusion, TwoTowerDiffusion  # noqa: E402
from lcm.train.compile import compile_loss, compile_network, compile_optimizer  # noqa: E402

OBJECTIVES = {
    "base_lcm": MSEObjective,
    "two_tower": TwoTowerDiffusion,
    "one_tower": OneTowerDiffusion,
}


class Runner:
    """One network, its objective and optimizer; ``step(i)`` times one optimizer step."""

    def __init__(
        self,
        family: str,
        preset: str,
        args,
        compiled: bool = False,
        optimizer: bool = False,
        loss: bool = False,
    ) -> None:
        self.dev = dev = torch.device(args.device)
        cfg = FAMILIES[family].from_name(preset, sonar_dim=args.sonar_dim)
        torch.manual_seed(0)
        self.model = cfg.build(device=dev)
        self.objective = OBJECTIVES[family](self.model).to(dev)
        self.compiled = compiled
        if compiled:
            compile_network(SimpleNamespace(objective=self.objective), dynamic=False)
        if loss and not compile_loss(self.objective, dynamic=False):
            raise ValueError(f"{family}: its loss draws random numbers; not compiled with it")
        self.opt = torch.optim.AdamW(self.objective.parameters(), lr=1e-4, fused=dev.type == "cuda")
        self.compiled_optimizer = optimizer
        if optimizer:
            compile_optimizer(self.opt)
        B, T, D = args.batch, args.seq, args.sonar_dim
        x = torch.randn(B, T, D, device=dev, generator=torch.Generator().manual_seed(1))
        mask = torch.ones(B, T, dtype=torch.bool, device=dev)
        self.batch = {"x": x, "mask": mask, "loss_mask": mask}
        self.dtype = torch.bfloat16 if args.precision == "bf16" else None
        self.label = "eager" if not compiled else "compiled" + "+loss" * loss + "+opt" * optimizer
        self.times: list[float] = []
        self.losses: list[float] = []

    def step(self, i: int, timed: bool) -> None:
        dev = self.dev
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss = self.objective.loss(self.batch, torch.Generator(dev).manual_seed(i)).loss
        self.losses.append(loss.item())
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if timed:
            self.times.append(time.perf_counter() - t0)


def run(family: str, preset: str, args) -> list[tuple[str, Runner]]:
    """Eager (and, with --compile, compiled) runs of one family/preset; their steps alternate,
    so load swings on a shared machine hit both alike."""
    runners = [Runner(family, preset, args)]
    if args.compile:
        runners.append(Runner(family, preset, args, compiled=True))
    if args.compile and args.compile_optimizer:
        runners.append(Runner(family, preset, args, compiled=True, optimizer=True))
    if args.compile and args.compile_loss and family == "base_lcm":
        opt = args.compile_optimizer
        runners.append(Runner(family, preset, args, compiled=True, optimizer=opt, loss=True))
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup + args.steps):
        for r in runners if i % 2 == 0 else runners[::-1]:
            r.step(i, timed=i >= args.warmup)
    out = []
    B, T = args.batch, args.seq
    for r in runners:
        step = statistics.median(r.times)
        n_params = sum(p.numel() for p in r.model.parameters())
        concepts_s = B * T / step
        if r.dev.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**30
            mfu = 6 * n_params * concepts_s / (args.peak_tflops * 1e12)
            extra = f"peak GPU mem {peak:6.2f} GiB  MFU {100 * mfu:5.1f}%"
        else:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
            extra = f"peak process RSS {rss:6.2f} GiB"
        line = (
            f"{family:10s} {preset:6s} {r.label:12s} "
            f"{n_params / 1e6:9.2f}M params  {1000 * step:8.1f} ms/step"
            f"  {concepts_s:9.1f} concepts/s  {extra}"
        )
        out.append((line, r))
    return out


def main(
    families: str = "base_lcm,two_tower,one_tower",
    presets: str = "tiny",
    device: str = "cpu",
    precision: Literal["fp32", "bf16"] = "fp32",
    sonar_dim: int = 1024,
    batch: int = 8,
    seq: int = 64,
    steps: int = 5,
    warmup: int = 2,
    peak_tflops: float = 989.0,
    compile: bool = False,
    compile_optimizer: bool = False,
    compile_loss: bool = False,
    threads: int = 0,
) -> None:
    """Training throughput (concepts/s), peak memory and MFU per family and preset.

    Args:
        families: families, comma-separated.
        presets: presets, comma-separated.
        device: torch device.
        precision: ``fp32`` or ``bf16`` autocast.
        sonar_dim: concept width.
        batch: documents per batch.
        seq: concepts per document.
        steps: timed steps.
        warmup: untimed steps first.
        peak_tflops: the device's peak TFLOP/s for MFU (989: H100 bf16 dense).
        compile: also run compiled (``torch.compile``) and print the ratio.
        compile_optimizer: with ``compile``, a third run that also compiles the AdamW update
            (:func:`lcm.train.compile.compile_optimizer`).
        compile_loss: with ``compile``, a run that compiles the loss with the network as one
            graph (:func:`lcm.train.compile.compile_loss`; Base-LCM only: the diffusion losses
            draw random numbers), and the optimizer too with ``compile_optimizer``.
        threads: torch threads (0: torch's default).
    """
    args = SimpleNamespace(**locals())
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"device {args.device}, {args.precision}, batch {args.batch} x {args.seq} concepts, "
        f"D={args.sonar_dim}"
    )
    for preset in args.presets.split(","):
        for family in args.families.split(","):
            results = run(family, preset, args)
            for line, _ in results:
                print(line, flush=True)
            if args.compile:
                (_, eager), *compiled = results
                for _, comp in compiled:
                    # median over steps of each step's eager/compiled ratio (adjacent steps)
                    ratio = statistics.median(
                        e / c for e, c in zip(eager.times, comp.times, strict=True)
                    )
                    print(
                        f"{'':17s} {comp.label} speed-up {ratio:5.2f}x (ratio of medians "
                        f"{statistics.median(eager.times) / statistics.median(comp.times):5.2f}x)"
                        f"  losses equal to "
                        f"{max(abs(a - b) for a, b in zip(eager.losses, comp.losses)):.1e} "
                        f"over {len(eager.losses)} steps",
                        flush=True,
                    )


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
