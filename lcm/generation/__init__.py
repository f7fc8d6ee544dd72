"""Generation: one loop for every family (stopping, trimming, batching) and per-family steps."""

from lcm.generation.generator import GenerationOutput, generate, left_pad
from lcm.generation.steps import DiffusionSampling, NextConceptStep, make_step

__all__ = [
    "DiffusionSampling",
    "GenerationOutput",
    "NextConceptStep",
    "generate",
    "left_pad",
    "make_step",
]
