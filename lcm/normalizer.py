"""Robust per-dimension normalizer for concept vectors.

LCM paper section 2.2.1 trains in a normalized SONAR space: ``x' = (x - median) / IQR`` per
dimension, fitted on a sample of sentences. Meta's code passes ``quantile_range=(0.25, 0.75)`` to
scikit-learn's RobustScaler, which reads the numbers as *percentiles* (0.25% and 0.75%), so its
scale is a near-zero inter-quantile range and heavy tails blow up. We use the real 25th and 75th
percentiles.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor, nn


class RobustNormalizer(nn.Module):
    """``normalize(x) = (x - median) / (q75 - q25)`` per dimension, and its inverse.

    The statistics are buffers, so they follow ``.to(device)`` and are saved in checkpoints.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    @classmethod
    def fit(cls, x: Tensor, eps: float = 1e-6) -> RobustNormalizer:
        """Fit on ``x`` of shape ``(N, dim)`` (a sample of concept vectors)."""
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(
                f"fit() needs at least 2 vectors of shape (N, dim), got {tuple(x.shape)}"
            )
        if not torch.isfinite(x).all():
            raise ValueError("fit() got NaN or inf values")
        x = x.double()
        q = torch.quantile(x, torch.tensor([0.25, 0.5, 0.75], dtype=x.dtype), dim=0)  # (3, dim)
        norm = cls(x.shape[1])
        norm.center.copy_(q[1])
        # A constant dimension has IQR 0; eps keeps the map invertible instead of dividing by 0.
        norm.scale.copy_((q[2] - q[0]).clamp_min(eps))
        return norm

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.center.to(x.dtype)) / self.scale.to(x.dtype)

    def denormalize(self, x: Tensor) -> Tensor:
        return x * self.scale.to(x.dtype) + self.center.to(x.dtype)

    def save(self, path: str | Path) -> None:
        torch.save({"center": self.center.cpu(), "scale": self.scale.cpu()}, path)

    @classmethod
    def load(cls, path: str | Path | BinaryIO) -> RobustNormalizer:
        state = torch.load(path, map_location="cpu", weights_only=True)
        norm = cls(state["center"].shape[0])
        norm.load_state_dict(state)
        return norm
