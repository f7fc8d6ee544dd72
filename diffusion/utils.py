"""Small helpers shared by the schedulers and samplers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: One generator for the whole tensor, or one per row (the first dimension): with one generator
#: per document, a document's random draws do not depend on what it is batched with.
Generators = torch.Generator | Sequence[torch.Generator] | None


def per_row(generator: Generators, rows: int) -> list[torch.Generator] | None:
    """The per-row generators of ``generator`` (None for one shared generator or none),
    checked against the number of rows."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    generators = list(generator)
    if len(generators) != rows:
        raise ValueError(f"{len(generators)} generators for {rows} rows: give one per row")
    return generators


def randn_tensor(
    shape: Sequence[int],
    generator: Generators = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Standard normal noise that is reproducible across devices.

    The noise is drawn on the generator's device and then moved, so a CPU generator gives the same
    numbers whether the sample lives on CPU or GPU.

    Args:
        shape: Output shape.
        generator: Optional random generator, or one per row (``shape[0]`` of them): row ``i``
            is then drawn from generator ``i`` alone.
        device: Device of the returned tensor (default: the generator's, else CPU).
        dtype: Dtype of the returned tensor (default: torch's default float dtype).

    Returns:
        A tensor of shape ``shape`` with i.i.d. ``N(0, 1)`` entries.
    """
    rows = per_row(generator, shape[0] if len(shape) else 0)
    if rows is not None:
        return torch.stack([randn_tensor(shape[1:], g, device, dtype) for g in rows])
    if generator is None:
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    noise = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype)
    return noise if device is None else noise.to(device)


def randint_tensor(
    high: int,
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniform integers in ``[0, high)`` (int64), drawn on the generator's device, then moved."""
    if generator is None:
        return torch.randint(0, high, tuple(shape), device=device)
    values = torch.randint(0, high, tuple(shape), generator=generator, device=generator.device)
    return values if device is None else values.to(device)
