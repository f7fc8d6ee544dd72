"""One generation loop for every model family: batching, stopping, trimming.

Stopping rules (LCM paper section 2.5, in *raw* concept space):
- end of text: cosine to the embedding of a stop sentence ("End of text.") >= ``eot_threshold``;
- repetition: cosine to the previous concept >= ``repeat_threshold``;
- length: ``max_new_concepts``.
The concept that triggers a stop is not part of the output (Meta's default left the stop sentence
in, and it entered ROUGE).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from diffusion.utils import Generators
from lcm.generation.steps import NextConceptStep
from lcm.normalizer import RobustNormalizer


def document_seed(seed: int, lang: str, sentences: Sequence[str]) -> int:
    """The seed of one document's generator: a hash of the run's seed, the language and the
    sentences, so a document draws the same numbers whatever it is batched with."""
    key = json.dumps([seed, lang, list(sentences)], ensure_ascii=False).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


@dataclass
class GenerationOutput:
    """Generated concepts per document (raw space) and why each document stopped.

    ``extras`` maps the step's per-concept facts (``NextConceptStep.last_info``) to one tensor
    per document, aligned with ``concepts``: e.g. ``extras["exit_step"][i]`` (n_i,) are the
    refiner's iterations for each concept of document i.
    """

    concepts: list[Tensor]  # per document: (n_i, D)
    stop_reasons: list[str]  # "eot" | "repetition" | "max_length"
    extras: dict[str, list[Tensor]] = field(default_factory=dict)


def left_pad(seqs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack (T_i, D) sequences into (B, T, D), padding on the left, and a (B, T) validity mask."""
    if not seqs or any(s.ndim != 2 or s.shape[0] == 0 for s in seqs):
        raise ValueError("every prompt needs at least one concept, as a (T, D) tensor")
    T = max(s.shape[0] for s in seqs)
    D = seqs[0].shape[1]
    x = seqs[0].new_zeros(len(seqs), T, D)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool, device=seqs[0].device)
    for i, s in enumerate(seqs):
        x[i, T - s.shape[0] :] = s
        mask[i, T - s.shape[0] :] = True
    return x, mask


@torch.no_grad()
def generate(
    step: NextConceptStep,
    prompts: list[Tensor],
    normalizer: RobustNormalizer,
    max_new_concepts: int = 16,
    eot: Tensor | None = None,
    eot_threshold: float = 0.9,
    repeat_threshold: float = 0.9,
    min_new_concepts: int = 0,
    generator: Generators = None,
) -> GenerationOutput:
    """Continue each prompt (raw concepts, ``(T_i, D)``) with new concepts.

    Args:
        step: the model family's next-concept step.
        prompts: raw-space concept sequences, one per document.
        normalizer: maps raw concepts to the model's normalized space and back.
        max_new_concepts: hard cap per document.
        eot: raw embedding ``(D,)`` of the stop sentence; None disables the rule.
        eot_threshold: cosine at or above which a concept counts as the stop sentence.
        repeat_threshold: cosine to the previous concept at or above which generation stops.
        min_new_concepts: stop rules are ignored before this many concepts.
        generator: seeds every random draw (diffusion noise, the refiner's initial state, code
            sampling): one generator for the batch, or one per document (then a document's
            output does not depend on the others in the batch).
    """
    x, mask = left_pad([normalizer.normalize(p) for p in prompts])
    B = x.shape[0]
    step.start(x, mask)
    prev = torch.stack([p[-1] for p in prompts])  # (B, D) raw, last prompt concept
    out: list[list[Tensor]] = [[] for _ in range(B)]
    info: dict[str, list[list[Tensor]]] = {}
    reasons = ["max_length"] * B
    active = torch.ones(B, dtype=torch.bool)
    for k in range(max_new_concepts):
        y = step.next(generator)  # (B, D) normalized
        facts = {name: v.detach().cpu() for name, v in getattr(step, "last_info", {}).items()}
        raw = normalizer.denormalize(y)  # (B, D)
        stop_eot = torch.zeros(B, dtype=torch.bool)
        stop_rep = torch.zeros(B, dtype=torch.bool)
        if k >= min_new_concepts:
            if eot is not None:
                stop_eot = (
                    F.cosine_similarity(raw, eot[None].to(raw), dim=-1) >= eot_threshold
                ).cpu()
            stop_rep = (F.cosine_similarity(raw, prev, dim=-1) >= repeat_threshold).cpu()
        for i in range(B):
            if not active[i]:
                continue
            if stop_eot[i] or stop_rep[i]:
                reasons[i] = "eot" if stop_eot[i] else "repetition"
                active[i] = False  # the stopping concept is trimmed: not appended
            else:
                out[i].append(raw[i])
                for name, v in facts.items():
                    info.setdefault(name, [[] for _ in range(B)])[i].append(v[i])
        if not active.any() or k == max_new_concepts - 1:
            break
        prev = raw
        step.append(y)
    D = x.shape[-1]
    concepts = [torch.stack(c) if c else x.new_zeros(0, D) for c in out]
    extras = {
        name: [torch.stack(v) if v else torch.zeros(0, dtype=torch.long) for v in per_doc]
        for name, per_doc in info.items()
    }
    return GenerationOutput(concepts, reasons, extras)
