"""Generation: one loop for every family (stopping, trimming, batching) and per-family steps."""

from lcm.generation.generator import GenerationOutput, document_seed, generate, left_pad
from lcm.generation.steps import NextConceptStep, StepOptions, make_step, register_step
from lcm.objectives.diffusion import SamplingConfig

__all__ = [
    "GenerationOutput",
    "NextConceptStep",
    "SamplingConfig",
    "document_seed",
    "generate",
    "left_pad",
    "make_step",
    "register_step",
    "StepOptions",
]
