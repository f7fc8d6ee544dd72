"""How far apart two equally correct fp32 One-Tower generations end up: eager against eager with
every denoiser output multiplied by (1 + eps * N(0, 1)), eps about one fp32 rounding (6e-8).

    OMP_WAIT_POLICY=PASSIVE python bench/rounding_amplification.py --threads 1

A compiled step (inductor fuses and reorders reductions: RMSNorm, softmax, matmul blocking)
differs from eager by a few roundings per call; this measures what such differences become after
``new`` autoregressive concepts of ``steps`` guided DDIM steps, the bench's settings
(bench/RESULTS.md). Not a speed bench: the figures are max |differences|.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lcm.generation import SamplingConfig, generate, make_step  # noqa: E402
from lcm.models import OneTowerConfig  # noqa: E402
from lcm.normalizer import RobustNormalizer  # noqa: E402


def run(model, norm, prompts, new: int, sampling: SamplingConfig, eps: float = 0.0):
    """(B * new, D) concepts; eps > 0 perturbs every denoiser output by relative eps noise."""
    step = make_step(model, sampling=sampling)
    if eps:
        denoise = step.denoise
        noise = torch.Generator().manual_seed(1)

        def perturbed(*args, **kwargs):
            y = denoise(*args, **kwargs)
            return y * (1 + eps * torch.randn(y.shape, generator=noise))

        step.denoise = perturbed
    g = torch.Generator().manual_seed(0)
    out = generate(step, prompts, norm, max_new_concepts=new, repeat_threshold=2.0, generator=g)
    return torch.cat(out.concepts)


def main(
    preset: str = "tiny",
    sonar_dim: int = 1024,
    batch: int = 4,
    context: int = 32,
    new: str = "1,2,4,8",
    steps: int = 40,
    guidance: str = "1,3",
    eps: float = 6e-8,
    threads: int = 0,
) -> None:
    """Max |difference| of One-Tower concepts under rounding-sized perturbations.

    Args:
        preset: One-Tower preset.
        sonar_dim: concept width.
        batch: documents.
        context: prompt concepts per document.
        new: numbers of generated concepts per document, comma-separated.
        steps: DDIM steps per concept.
        guidance: guidance scales, comma-separated.
        eps: relative perturbation of each denoiser output (fp32 unit roundoff: 6e-8).
        threads: torch threads (0: torch's default).
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = OneTowerConfig.from_name(preset, sonar_dim=sonar_dim).build().eval()
    norm = RobustNormalizer(sonar_dim)
    prompts = [torch.randn(context, sonar_dim) for _ in range(batch)]
    print(f"One-Tower {preset}, batch {batch}, context {context}, {steps} DDIM steps, eps {eps}")
    with torch.no_grad():
        for g in (float(v) for v in guidance.split(",")):
            sampling = SamplingConfig(num_inference_steps=steps, guidance_scale=g)
            for n in (int(v) for v in new.split(",")):
                a = run(model, norm, prompts, n, sampling)
                b = run(model, norm, prompts, n, sampling, eps)
                print(
                    f"  guidance {g:g}, {n} concept(s): max|diff| {(a - b).abs().max().item():.2e}"
                    f"  (max|concept| {a.abs().max().item():.2f})",
                    flush=True,
                )


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
