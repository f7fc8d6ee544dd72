"""Generation: one loop for every family (stopping, trimming, batching); each family's step is
built by its objective (:meth:`lcm.objectives.Objective.generation_step`)."""

from lcm.generation.generator import GenerationOutput, document_seed, generate, left_pad
from lcm.generation.steps import NextConceptStep, StepOptions, make_step
from lcm.objectives.diffusion import SamplingConfig

__all__ = [
    "GenerationOutput",
    "NextConceptStep",
    "SamplingConfig",
    "document_seed",
    "generate",
    "left_pad",
    "make_step",
    "StepOptions",
]
