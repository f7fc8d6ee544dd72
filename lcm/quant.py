"""Residual vector quantization (RVQ) of concept space, for Quant-LCM (paper section 2.5).

    x ~ sum_{j<K} C_j[c_j]        K codebooks C_j (n_units, D), codes c_j in [0, n_units)

Codebook j quantizes the residual x - sum_{i<j} C_i[c_i] left by the codebooks before it, so the
partial sums `decode_prefix(codes, k)` go from coarse (k = 1) to fine (k = K). The paper quantizes
SONAR space with 64 codebooks of 8192 units. **Ours**: faiss `ResidualQuantizer` fits the
codebooks (greedy per-codebook k-means on the residuals, with beam-search assignment); after
fitting, the codebooks live in a torch buffer, so encoding, decoding, saving and moving to GPU need
no faiss.

Encoding is the same beam search faiss uses (`ResidualQuantizer::refine_beam`): keep the `beam_size`
best partial encodings, extend each by every unit of the next codebook, keep the best again.

A quantizer records what it was fitted on (:attr:`RVQ.residual`): concepts (``"none"``), or a
residual Quant-LCM's targets ``x_{t+1} - base_t`` over one of :data:`RESIDUALS`' bases. The record
is a buffer, so it travels with the codebooks through ``save``/``load``, checkpoints and EMA
copies; files and checkpoints written before it existed load as fitted on concepts.

Example:
    >>> rvq = RVQ(dim=16, n_codebooks=4, n_units=64).fit(x)       # x (N, 16), N >= ~2.5k
    >>> codes = rvq.encode(x)                                      # (N, 4) int64
    >>> coarse = rvq.decode_prefix(codes, 1)                       # (N, 16)
    >>> rvq.reconstruction_error(x)                                # {"mse": ..., "relative": ...}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class RVQConfig:
    """The size of a residual quantizer.

    Attributes:
        n_codebooks: K, the number of residual codebooks.
        n_units: Units per codebook (a power of two).
        beam_size: Beam width of the encoder.
    """

    n_codebooks: int = 4
    n_units: int = 64
    beam_size: int = 5


PRESETS: dict[str, RVQConfig] = {
    "tiny": RVQConfig(4, 64),  # CPU tests and pilots
    "paper": RVQConfig(64, 8192),  # LCM paper, section 2.5
}
"""Preset name -> quantizer size."""

RESIDUALS: tuple[str, ...] = ("none", "last", "context_mean", "source_mean", "source_lead")
"""What a quantizer can be fitted on, in the order of :data:`lcm.objectives.base.Residual`
(written out here: this module is imported before the objectives): ``"none"`` = concepts, any
other name = residuals of concepts over that base."""


class RVQ(nn.Module):
    """K residual codebooks of `n_units` vectors each, stored as a (K, n_units, D) buffer.

    Args:
        dim: Concept dimension D.
        n_codebooks: K.
        n_units: Units per codebook; a power of two (faiss stores codes as bit fields).
        beam_size: Beam width of the encoder (faiss' `max_beam_size`, default 5).
    """

    def __init__(
        self, dim: int, n_codebooks: int = 4, n_units: int = 64, beam_size: int = 5
    ) -> None:
        super().__init__()
        if n_units < 2 or n_units & (n_units - 1):
            raise ValueError(f"n_units must be a power of two >= 2, got {n_units}")
        if n_codebooks < 1 or beam_size < 1:
            raise ValueError("need n_codebooks >= 1 and beam_size >= 1")
        self.dim = dim
        self.n_codebooks = n_codebooks
        self.n_units = n_units
        self.beam_size = beam_size
        self.register_buffer("codebooks", torch.zeros(n_codebooks, n_units, dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        # Index into RESIDUALS of what the codebooks were fitted on (see `residual`).
        self.register_buffer("fitted_on", torch.zeros((), dtype=torch.long))

    @property
    def residual(self) -> str:
        """What the codebooks were fitted on: ``"none"`` (concepts) or the residual base of the
        residuals they were fitted on (:data:`RESIDUALS`); set by :meth:`fit`."""
        return RESIDUALS[int(self.fitted_on)]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Files and checkpoints from before `fitted_on` existed hold quantizers of concepts.
        state_dict.setdefault(prefix + "fitted_on", torch.zeros((), dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args)

    @classmethod
    def from_name(cls, name: str, dim: int, **kwargs: Any) -> RVQ:
        """`RVQ.from_name("tiny", dim=1024)`: the size from :data:`PRESETS`; keyword arguments
        replace its fields (e.g. ``beam_size=8``)."""
        if name not in PRESETS:
            raise KeyError(f"unknown RVQ preset {name!r}; known: {sorted(PRESETS)}")
        cfg = replace(PRESETS[name], **kwargs)
        return cls(dim, cfg.n_codebooks, cfg.n_units, cfg.beam_size)

    def extra_repr(self) -> str:
        fitted_on = "" if self.residual == "none" else f", residual={self.residual}"
        return f"dim={self.dim}, n_codebooks={self.n_codebooks}, n_units={self.n_units}{fitted_on}"

    def _check_fitted(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError("RVQ is not fitted: call fit(x) or load a saved one")

    # ---------------------------------------------------------------------------- fitting
    def fit(
        self,
        x: Tensor,
        *,
        niter: int = 10,
        seed: int = 1234,
        progressive_dim: bool = False,
        verbose: bool = False,
        residual: str = "none",
    ) -> RVQ:
        """Fit the codebooks on x (N, D) with faiss `ResidualQuantizer` (CPU, float32).

        Args:
            x: Training concepts. faiss warns below about 39 * n_units points per codebook and
                subsamples above 256 * n_units.
            niter: k-means iterations per codebook.
            seed: k-means seed.
            progressive_dim: faiss' progressive-dimension k-means (slightly better, ~10x slower).
            verbose: faiss training log.
            residual: What ``x`` holds, recorded as :attr:`residual`: ``"none"`` (concepts) or
                the base of the residuals ``x_{t+1} - base_t`` it holds (:data:`RESIDUALS`).

        Returns:
            self, fitted.
        """
        import faiss

        if residual not in RESIDUALS:
            raise ValueError(f"unknown residual {residual!r}; known: {list(RESIDUALS)}")
        data = np.ascontiguousarray(x.detach().reshape(-1, self.dim).float().cpu().numpy())
        rq = faiss.ResidualQuantizer(self.dim, self.n_codebooks, int(math.log2(self.n_units)))
        rq.train_type = (
            faiss.ResidualQuantizer.Train_progressive_dim
            if progressive_dim
            else faiss.ResidualQuantizer.Train_default
        )
        rq.max_beam_size = self.beam_size
        rq.cp.niter = niter
        rq.cp.seed = seed
        rq.verbose = verbose
        rq.train(data)
        books = faiss.vector_to_array(rq.codebooks).reshape(
            self.n_codebooks, self.n_units, self.dim
        )  # faiss stores the K codebooks back to back, row-major
        with torch.no_grad():
            self.codebooks.copy_(torch.from_numpy(books))
            self.fitted.fill_(True)
            self.fitted_on.fill_(RESIDUALS.index(residual))
        return self

    # ---------------------------------------------------------------------------- coding
    @torch.no_grad()
    def encode(self, x: Tensor, chunk_size: int = 4096) -> Tensor:
        """Beam-search codes of x (..., D) -> (..., K) int64, on x's device."""
        self._check_fitted()
        flat = x.reshape(-1, self.dim).to(self.codebooks.dtype)  # (N, D)
        chunks = [self._encode_chunk(c) for c in flat.split(chunk_size)] or [
            flat.new_zeros(0, self.n_codebooks, dtype=torch.long)
        ]
        return torch.cat(chunks).reshape(*x.shape[:-1], self.n_codebooks)

    def _encode_chunk(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        books = self.codebooks.to(x.device)  # (K, U, D)
        residual = x[:, None]  # (n, b=1, D) residual of every beam entry
        codes = x.new_zeros(n, 1, 0, dtype=torch.long)  # (n, b, j)
        err = residual.pow(2).sum(-1)  # (n, b) squared error of every beam entry
        for j in range(self.n_codebooks):
            book = books[j]  # (U, D)
            # ||r - c||^2 = ||r||^2 - 2 r.c + ||c||^2 for every (beam entry, unit) pair
            cand = err[:, :, None] - 2 * residual @ book.T + book.pow(2).sum(-1)  # (n, b, U)
            flat = cand.flatten(1)  # (n, b * U)
            keep = min(self.beam_size, flat.shape[1])
            _, idx = flat.topk(keep, dim=1, largest=False, sorted=True)  # (n, b') best first
            parent, unit = idx // self.n_units, idx % self.n_units  # (n, b') each
            residual = torch.gather(residual, 1, parent[..., None].expand(-1, -1, self.dim))
            residual = residual - book[unit]  # (n, b', D)
            prev = torch.gather(codes, 1, parent[..., None].expand(-1, -1, j))  # (n, b', j)
            codes = torch.cat((prev, unit[..., None]), dim=2)  # (n, b', j + 1)
            err = residual.pow(2).sum(-1)  # (n, b') exact, no accumulated rounding
        best = err.argmin(dim=1)  # (n,) topk order can differ from exact errors by rounding
        return codes[torch.arange(n, device=x.device), best]  # (n, K)

    def code_vectors(self, codes: Tensor) -> Tensor:
        """Per-codebook vectors C_j[c_j]: codes (..., k) -> (..., k, D), k <= K (a prefix)."""
        k = codes.shape[-1]
        if k > self.n_codebooks:
            raise ValueError(f"{k} codes per concept but only {self.n_codebooks} codebooks")
        level = torch.arange(k, device=codes.device)  # (k,)
        return self.codebooks[level, codes.to(self.codebooks.device)]  # (..., k, D)

    def decode(self, codes: Tensor) -> Tensor:
        """sum_j C_j[c_j]: codes (..., K) -> (..., D)."""
        self._check_fitted()
        if codes.shape[-1] != self.n_codebooks:
            raise ValueError(f"expected {self.n_codebooks} codes per concept, got {codes.shape}")
        return self.code_vectors(codes).sum(dim=-2)

    def decode_prefix(self, codes: Tensor, k: int) -> Tensor:
        """Coarse-to-fine partial sum of the first k codebooks: (..., >= k) -> (..., D);
        k = 0 gives zeros, k = K equals `decode`."""
        self._check_fitted()
        if not 0 <= k <= self.n_codebooks:
            raise ValueError(f"k must be in [0, {self.n_codebooks}], got {k}")
        return self.code_vectors(codes[..., :k]).sum(dim=-2)

    @torch.no_grad()
    def reconstruction_error(self, x: Tensor, k: int | None = None) -> dict[str, float]:
        """Error of decode_prefix(encode(x), k) (k = K by default) on x (..., D).

        Returns:
            mse: mean over elements of (x - x_hat)^2.
            relative: sum ||x - x_hat||^2 / sum ||x||^2.
        """
        codes = self.encode(x)
        x_hat = self.decode_prefix(codes, self.n_codebooks if k is None else k)
        diff = (x.to(x_hat) - x_hat).pow(2)
        return {
            "mse": float(diff.mean()),
            "relative": float(diff.sum() / x.to(x_hat).pow(2).sum().clamp(min=1e-12)),
        }

    # ---------------------------------------------------------------------------- storage
    def save(self, path: str | Path) -> None:
        """Write the codebooks and settings (plain tensors and ints, loadable weights_only)."""
        torch.save(
            {
                "dim": self.dim,
                "n_codebooks": self.n_codebooks,
                "n_units": self.n_units,
                "beam_size": self.beam_size,
                "state_dict": {k: v.cpu() for k, v in self.state_dict().items()},
            },
            Path(path),
        )

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> RVQ:
        """Read a file written by `save` (with `torch.load(weights_only=True)`)."""
        blob = torch.load(Path(path), map_location=map_location, weights_only=True)
        rvq = cls(blob["dim"], blob["n_codebooks"], blob["n_units"], blob["beam_size"])
        rvq.load_state_dict(blob["state_dict"])
        return rvq.to(map_location)
