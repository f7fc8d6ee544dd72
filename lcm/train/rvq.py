"""``lcm fit-rvq``: fit Quant-LCM's residual quantizer on concept shards, once, and report its
reconstruction error on held-out documents.

    lcm fit-rvq --data_dir shards/ --output rvq.pt --n_codebooks 64 --n_units 8192
    lcm fit --config ... --config configs/quant_lcm/small.yaml --model.rvq_path rvq.pt

The quantizer works in the space the model sees: the shards' robust normalizer is applied first
(as :class:`~lcm.train.data.ConceptDataModule` does), so a model trained on the same shards
can use the file as is. A residual Quant-LCM (``--model.residual context_mean``) needs a
quantizer of its targets' residuals over the same base and window length:

    lcm fit-rvq --data_dir shards/ --output rvq_cm.pt --residual context_mean --window 128
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lcm.quant import RVQ
from lcm.train.data import ConceptDataModule


def fit_rvq(
    data_dir: str,
    output: str,
    n_codebooks: int = 4,
    n_units: int = 64,
    max_train: int = 100_000,
    max_heldout: int = 20_000,
    val_fraction: float = 0.05,
    split_seed: int = 0,
    niter: int = 10,
    beam_size: int = 5,
    seed: int = 0,
    normalize: bool = True,
    residual: str = "none",
    window: int = 128,
) -> dict:
    """Fit residual codebooks with faiss on training documents and measure held-out error.

    Args:
        data_dir: ``lcm prepare`` output folder.
        output: Where to write the quantizer (``RVQ.save``); a ``.json`` report goes beside it.
        n_codebooks: K, codebooks (paper: 64).
        n_units: Units per codebook, a power of two (paper: 8192).
        max_train: Most training concepts to fit on (faiss subsamples above 256 x n_units).
        max_heldout: Most held-out concepts to measure the error on.
        val_fraction: Share of documents held out (the same split as ``lcm fit`` with the same
            ``val_fraction`` and ``split_seed``).
        split_seed: Seed of the document split.
        niter: k-means iterations per codebook.
        beam_size: Beam of the encoder.
        seed: k-means and sampling seed.
        normalize: Apply the shards' normalizer first (as the models do).
        residual: Fit on concepts (``none``) or on the residuals ``x_{t+1} - base_t`` over
            ``last`` or ``context_mean`` (:meth:`~lcm.train.data.ConceptDataModule.
            sample_residuals`), for a Quant-LCM trained with that ``residual``; the file records
            it (``RVQ.residual``).
        window: With a residual: the training windows' length (the model's ``max_seq_len``),
            since a context-mean base depends on where its window starts.

    Returns:
        The report: sizes, seconds, and the relative error (sum of squared errors over sum of
        squared norms) on train and held-out concepts with 1, 2, 4, ... K codebooks.
    """
    dm = ConceptDataModule(
        data_dir,
        val_fraction=val_fraction,
        split_seed=split_seed,
        normalize=normalize,
        max_seq_len=2 if residual == "none" else window,
        max_concepts_per_batch=2 if residual == "none" else window,
    )
    dm.setup()
    train = dm.sample_code_targets("train", max_train, residual, seed=seed)
    held = dm.sample_code_targets("val", max_heldout, residual, seed=seed + 1)
    if len(train) == 0:
        raise ValueError(f"{data_dir}: no training concepts")
    rvq = RVQ(dm.dim, n_codebooks, n_units, beam_size=beam_size)
    t0 = time.perf_counter()
    rvq.fit(train, niter=niter, seed=seed, residual=residual)
    seconds = time.perf_counter() - t0
    ks = sorted({min(2**i, n_codebooks) for i in range(n_codebooks.bit_length() + 1)})
    report = {
        "data_dir": str(data_dir),
        "dim": dm.dim,
        "n_codebooks": n_codebooks,
        "n_units": n_units,
        "residual": residual,
        "train_concepts": len(train),
        "heldout_concepts": len(held),
        "fit_seconds": round(seconds, 3),
        "relative_error": {
            "train": {k: rvq.reconstruction_error(train, k)["relative"] for k in ks},
            "heldout": (
                {k: rvq.reconstruction_error(held, k)["relative"] for k in ks} if len(held) else {}
            ),
        },
    }
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    rvq.save(out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    return report
