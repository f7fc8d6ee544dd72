"""The LCM paper's pre-training table (Table 3) at small scale, on CPU (issue #14).

    python -m experiments.pretraining.report --preset full --out_dir reports/pretraining
    python -m experiments.pretraining.report --preset ci --out_dir /tmp/pt      # seconds

On a fresh clone ``--preset full`` first builds its inputs under ``data/pretraining`` (the
corpus fetched from Debian packages, then ``lcm prepare``; :mod:`experiments.pretraining.inputs`,
about 7 minutes on 2 CPU cores) and reuses them afterwards; its training runs go to
``runs/pretraining``.

Every family (Base-LCM, One-Tower, Two-Tower, Quant-LCM, refiner) is trained through the
Lightning CLI (``lcm fit``'s :func:`lcm.train.cli.cli_main`, run in this process) on the same
training shards, with the same width, steps and seed. Then each is evaluated teacher-forced on
every evaluation set (the in-domain test split and the held-out source): l2, round-trip l2 (l2-r,
decoding by nearest neighbour in a bank of the training sentences), PAR and CA (paper section
2.4.1, neighbours excluded: :mod:`eval.metrics.concepts`), beside the baselines copy-previous,
context-mean, mean-concept (the training mean) and retrieval (the concept that followed the
training position whose context is most similar; faiss). Confidence intervals: percentile
bootstrap over documents (windows of one document are resampled together).

Evaluation layout, stated in the outputs: documents are cut into consecutive windows of
``window`` concepts (the models' training length); every position but a window's first is
scored; the CA pool is every concept of the evaluation set. Nothing is capped silently: the
number of documents, windows and scored positions per set are in ``results.json``.

A system is a family, or a family trained with a residual (``base_lcm+context_mean``: the
network learns a correction to the context mean, see :data:`lcm.objectives.base.Residual`).
The diffusion systems are also scored at guidance 1 beside their default guidance (rows
``<system>@g1``), and every system continues a few documents free-running (not teacher-forced:
:func:`lcm.generation.generate` with the checkpoint's sampling settings), decoded into the bank.

Outputs in ``out_dir``: ``results.json``, ``table.md``, ``ca.png`` (CA per system with 95%
intervals), ``val_ca.png`` (validation CA against training steps, from the training logs).
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from eval.baselines import constant_mean, context_mean, copy_previous, pad_documents
from eval.metrics.concepts import l2, paraphrasing, sequence_contrastive_accuracy
from experiments.pretraining.causal_lm import SEP, CausalLM, LMConfig, train_causal_lm
from experiments.pretraining.inputs import (
    FULL_INPUTS,
    InputRecipe,
    InputsMissing,
    build_inputs,
    parts_in_use,
)

FAMILIES = {
    "base_lcm": "Base-LCM",
    "one_tower": "One-Tower",
    "two_tower": "Two-Tower",
    "quant_lcm": "Quant-LCM",
    "refiner": "refiner",
}
BASELINES = {
    "copy_previous": "copy-previous",
    "context_mean": "context-mean",
    "mean_concept": "mean-concept",
    "retrieval": "retrieval",
}
METRICS = ("l2", "l2_r", "par", "ca")
DIFFUSION = ("one_tower", "two_tower")
CONTRASTIVE = ("base_lcm", "refiner")  # families with a contrastive_weight option
RESIDUAL_LABELS = {"last": "last", "context_mean": "ctx-mean"}
MI_DEFINITION = (
    "paper 2.4.1: MI = (log p_LM(s | c) - log p_LM(s | <sep>)) / |s| in nats per token, where "
    "s is the sentence decoded from the prediction (nearest bank sentence), c the {k} gold "
    "sentences before it in its window, each followed by <sep> (the paper's newline), and |s| "
    "its LM tokens; the set's value is the token-weighted mean. LM: a small GPT trained here "
    "on the training documents only (the paper: GPT-2)"
)


def split_system(system: str) -> tuple[str, str]:
    """``"base_lcm+context_mean"`` -> ``("base_lcm", "context_mean")``; a bare family has
    residual ``"none"``. Unknown families or residuals are errors that name them."""
    from lcm.objectives.base import check_residual

    family, _, residual = system.partition("+")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r} in system {system!r}; known: {list(FAMILIES)}")
    return family, check_residual(residual or "none")


def system_label(system: str) -> str:
    """Table label: ``Base-LCM``, ``Base-LCM +ctx-mean``, ``Two-Tower, guidance 1``."""
    name, g1, _ = system.partition("@g1")
    family, residual = split_system(name)
    label = FAMILIES[family] + ("" if residual == "none" else f" +{RESIDUAL_LABELS[residual]}")
    return label + (", guidance 1" if g1 else "")


@dataclass(frozen=True)
class Preset:
    """What one report run depends on.

    Attributes:
        train_dir: ``lcm prepare`` output the families train on (``None``: built by ``toy``).
        eval_dirs: ``{name: prepared folder}`` of the evaluation sets.
        steps: optimizer steps per family.
        d_model: model width of every family (``model_overrides`` on the ``tiny`` presets).
        ffn_dim: feed-forward width.
        lr: peak learning rate.
        warmup_steps: linear warmup.
        window: concepts per training sequence and per evaluation window.
        max_concepts_per_batch: training batch size in concepts.
        val_check_interval: validation every this many steps (validation CA vs steps).
        seed: the seed of every family (data order, noise, initialisation).
        bootstrap: bootstrap resamples.
        retrieval_window: concepts of context the retrieval baseline matches on (their mean).
        families: which systems to train: a family (``base_lcm``) or a family with a residual
            (``base_lcm+context_mean``, ``two_tower+last``; :func:`split_system`).
        toy: build a synthetic corpus with a hash codec instead (the ``ci`` preset).
        work_dir: where the training runs go (``None``: beside ``train_dir``, or under
            ``out_dir`` for ``toy``); a run whose last checkpoint exists is reused.
        guidance_one: also score the diffusion systems at guidance 1 (rows ``<system>@g1``).
        generate_docs: documents per evaluation set continued free-running.
        prompt_concepts: concepts of each such document given as the prompt.
        generate_concepts: concepts generated after the prompt (the repetition and
            end-of-text stops are off, so every system writes that many).
        contrastive_weight: Base-LCM and refiner systems train with this weight of the InfoNCE
            term added to the MSE (``--model.contrastive_weight``; 0: the MSE alone). Other
            families do not have the option and are an error with a weight > 0.
        temperature: that term's temperature (``--model.temperature``).
        input_noise: every system trains with Gaussian noise of this std per coordinate added
            to the context concepts its network reads (``--model.input_noise``, training only,
            normalized space; 0: none).
        mi: score MI (paper 2.4.1) with a small causal LM trained on the training documents
            (:mod:`experiments.pretraining.causal_lm`; the paper uses GPT-2).
        mi_context: gold sentences of context before each scored sentence (paper: 10).
        lm: the scoring LM's size and training recipe.
        lm_dir: where that LM is cached (``None``: ``<work_dir>/causal_lm``); reused when it
            was trained on the same text with the same ``lm``.
        inputs: how ``train_dir`` and ``eval_dirs`` are built when they are missing
            (:mod:`experiments.pretraining.inputs`); only the folders that are the recipe's
            own are built (an explicit ``train_dir`` or evaluation folder never is).
        prepare_inputs: build the recipe's missing folders (False: an error that names them
            and the commands that build them).
    """

    train_dir: str | None
    eval_dirs: dict[str, str]
    steps: int = 400
    d_model: int = 128
    ffn_dim: int = 512
    lr: float = 1e-3
    warmup_steps: int = 100
    window: int = 64
    max_concepts_per_batch: int = 1024
    val_check_interval: int = 100
    seed: int = 0
    bootstrap: int = 1000
    retrieval_window: int = 2
    families: tuple[str, ...] = tuple(FAMILIES)
    toy: bool = False
    work_dir: str | None = None
    guidance_one: bool = True
    generate_docs: int = 2
    prompt_concepts: int = 3
    generate_concepts: int = 4
    contrastive_weight: float = 0.0
    temperature: float = 0.05
    input_noise: float = 0.0
    mi: bool = True
    mi_context: int = 10
    lm: LMConfig = LMConfig()
    lm_dir: str | None = None
    inputs: InputRecipe | None = None
    prepare_inputs: bool = True


PRESETS: dict[str, Preset] = {
    "full": Preset(
        train_dir=FULL_INPUTS.train_dir,
        eval_dirs=FULL_INPUTS.eval_dirs,
        families=(
            *FAMILIES,
            "base_lcm+last",
            "base_lcm+context_mean",
            "one_tower+context_mean",
            "two_tower+context_mean",
        ),  # refiner+context_mean came later: --families, see residual_206k/
        work_dir="runs/pretraining",
        inputs=FULL_INPUTS,
    ),
    "ci": Preset(
        train_dir=None,
        eval_dirs={},
        steps=6,
        d_model=16,
        ffn_dim=32,
        warmup_steps=2,
        window=16,
        max_concepts_per_batch=128,
        val_check_interval=6,
        bootstrap=50,
        toy=True,
        families=(
            *FAMILIES,
            "base_lcm+context_mean",
            "two_tower+last",
            "refiner+context_mean",
            "quant_lcm+context_mean",
        ),
        lm=LMConfig(
            vocab_size=300,
            d_model=32,
            n_layers=2,
            n_heads=2,
            block=64,
            steps=300,
            batch=8,
            lr=1e-2,
            warmup=10,
        ),
    ),
}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass
class EvalSet:
    """Windows of an evaluation set: ``x`` (B, T, D) raw concepts, ``mask`` (B, T), ``doc``
    (B,) the document index of each window, ``doc_ids`` the documents."""

    name: str
    folder: str
    x: Tensor
    mask: Tensor
    doc: np.ndarray
    doc_ids: list[str]
    sentences: list[list[str]] = field(default_factory=list)


def read_prepared(folder: str | Path, field_name: str = "text"):
    """``(id, sentences, (n, D) float32 tensor)`` of every document of an ``lcm prepare``
    output folder, in shard order."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    if not (folder / "summary.json").exists():
        raise FileNotFoundError(f"{folder}: no summary.json (run `lcm prepare` to the end)")
    files = sorted((folder / "shards").glob("shard-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{folder}: no shards")
    cols = ["id", f"{field_name}_sentences", f"{field_name}_embeddings"]
    for path in files:
        for row in pq.read_table(path, columns=cols).to_pylist():
            emb = row[f"{field_name}_embeddings"]
            yield (
                row["id"],
                row[f"{field_name}_sentences"],
                torch.tensor(np.asarray(emb, dtype=np.float32)),
            )


def load_eval_set(
    name: str, folder: str, window: int, documents: set[str] | None = None
) -> EvalSet:
    """Cut every document into consecutive windows of ``window`` concepts (a last window of a
    single concept has nothing to score and is left out, and counted); with ``documents``, only
    the documents with those ids."""
    wins, sents, doc, ids = [], [], [], []
    for doc_id, s, v in read_prepared(folder):
        if documents is not None and doc_id not in documents:
            continue
        d = len(ids)
        ids.append(doc_id)
        for start in range(0, v.shape[0], window):
            part = v[start : start + window]
            if part.shape[0] < 2:
                continue
            wins.append(part)
            sents.append(list(s[start : start + window]))
            doc.append(d)
    if not wins:
        raise ValueError(f"{folder}: no document has 2 or more concepts")
    x, mask = pad_documents(wins)
    return EvalSet(name, str(folder), x, mask, np.asarray(doc), ids, sents)


def load_validation_set(
    name: str, ckpt: Path, window: int, max_documents: int | None = None
) -> EvalSet:
    """The in-domain validation documents of a checkpoint's training run: the documents its
    data module held out of its training folder (``split_documents`` with the checkpoint's
    ``val_fraction`` and ``split_seed``; its ``val_dir`` when it had one), the first
    ``max_documents`` of them in the folder's order, cut as :func:`load_eval_set` does."""
    import pyarrow.parquet as pq

    from lcm.train.data import split_documents
    from lcm.train.module import read_checkpoint

    hp = read_checkpoint(ckpt).get("datamodule_hyper_parameters") or {}
    if not hp.get("data_dir"):
        raise ValueError(f"{ckpt}: no datamodule_hyper_parameters.data_dir to find its validation")
    if hp.get("val_dir"):
        folder = str(hp["val_dir"])
        ids = [i for i, _, _ in read_prepared(folder)]
    else:
        folder = str(hp["data_dir"])
        files = sorted((Path(folder) / "shards").glob("shard-*.parquet"))
        ids = [i for f in files for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
        _, val = split_documents(ids, float(hp["val_fraction"]), int(hp["split_seed"]))
        ids = [ids[i] for i in val]
    if max_documents is not None:
        ids = ids[:max_documents]
    return load_eval_set(name, folder, window, set(ids))


def training_arrays(folder: str) -> tuple[Tensor, list[str], np.ndarray]:
    """All training concepts (N, D), their sentences, and each one's document index."""
    vecs, sents, doc = [], [], []
    for i, (_, s, v) in enumerate(read_prepared(folder)):
        vecs.append(v)
        sents += list(s)
        doc += [i] * v.shape[0]
    return torch.cat(vecs), sents, np.asarray(doc)


# ---------------------------------------------------------------------------------------------
# Baselines that need the training data
# ---------------------------------------------------------------------------------------------


def _context_keys(x: Tensor, doc: np.ndarray, k: int) -> tuple[Tensor, np.ndarray]:
    """For every position i with a successor in its document: the mean of x[i-k+1..i] within
    the document (unit length); returns keys (M, D) and the successor rows (M,)."""
    n = x.shape[0]
    starts = np.zeros(n, dtype=np.int64)
    for i in range(1, n):
        starts[i] = i if doc[i] != doc[i - 1] else starts[i - 1]
    csum = torch.cat([torch.zeros(1, x.shape[1], dtype=torch.float64), x.double().cumsum(0)])
    idx = np.arange(n)
    lo = np.maximum(idx - k + 1, starts)
    keys = (csum[idx + 1] - csum[lo]) / torch.tensor(idx + 1 - lo, dtype=torch.float64)[:, None]
    has_next = np.zeros(n, dtype=bool)
    has_next[:-1] = doc[1:] == doc[:-1]
    keys = torch.nn.functional.normalize(keys[has_next].float(), dim=-1)
    return keys, idx[has_next] + 1


class RetrievalBaseline:
    """Predict the concept that followed the training position whose context (the mean of its
    last ``k`` concepts, cosine similarity) is nearest to the current one (faiss, exact)."""

    def __init__(self, train_x: Tensor, train_doc: np.ndarray, k: int) -> None:
        import faiss

        self.k = k
        self.train_x = train_x
        keys, self.successor = _context_keys(train_x, train_doc, k)
        self.index = faiss.IndexFlatIP(keys.shape[1])
        self.index.add(keys.numpy())

    def __call__(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        b, t, d = x.shape
        pred = torch.zeros_like(x)
        defined = torch.zeros_like(mask)
        m = mask.to(x.dtype)[..., None]
        csum = (x * m).cumsum(1)
        for n in range(1, t):
            lo = max(0, n - self.k)
            count = mask[:, lo:n].sum(1, keepdim=True).clamp(min=1)
            ctx = (csum[:, n - 1] - (csum[:, lo - 1] if lo > 0 else 0)) / count
            q = torch.nn.functional.normalize(ctx.float(), dim=-1).numpy()
            _, found = self.index.search(q, 1)
            pred[:, n] = self.train_x[self.successor[found[:, 0]]]
            defined[:, n] = mask[:, n] & mask[:, n - 1]
        return pred, defined


class Bank:
    """Nearest-neighbour decoding into the training sentences (the offline codec's decoder):
    ``decode`` returns the nearest bank vector, which *is* the codec's encoding of the decoded
    sentence, so ``||decode(pred) - gold||`` is the round-trip l2 without re-encoding."""

    def __init__(self, train_x: Tensor, sentences: list[str]) -> None:
        import faiss

        uniq: dict[str, int] = {}
        for i, s in enumerate(sentences):
            uniq.setdefault(s, i)
        rows = list(uniq.values())
        self.sentences = list(uniq)
        self.vectors = train_x[rows].float().contiguous()
        self.size = len(rows)
        self.index = faiss.IndexFlatL2(self.vectors.shape[1])
        self.index.add(self.vectors.numpy())

    def decode(self, pred: Tensor) -> Tensor:
        _, found = self.index.search(pred.float().contiguous().numpy(), 1)
        return self.vectors[torch.from_numpy(found[:, 0])]

    def decode_text(self, pred: Tensor) -> list[str]:
        _, found = self.index.search(pred.float().contiguous().numpy(), 1)
        return [self.sentences[i] for i in found[:, 0]]


# ---------------------------------------------------------------------------------------------
# Metrics and bootstrap
# ---------------------------------------------------------------------------------------------


def position_metrics(
    pred: Tensor, es: EvalSet, defined: Tensor, bank: Bank | None
) -> dict[str, Tensor]:
    """Per-position l2, l2-r, PAR and CA (B, T), NaN where not scored."""
    weight = es.mask & defined
    weight[:, 0] = False
    out = {}
    d = l2(pred, es.x)
    out["l2"] = torch.where(weight, d, torch.nan)
    if bank is not None:
        r = torch.full(weight.shape, torch.nan)
        r[weight] = l2(bank.decode(pred[weight]), es.x[weight])
        out["l2_r"] = r
    out["par"] = paraphrasing(pred, es.x, es.mask, weight)
    out["ca"] = sequence_contrastive_accuracy(pred, es.x, weight, es.mask, neighbours=1)
    return out


def per_document(values: Tensor, doc: np.ndarray, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums and counts of the non-NaN values of each document."""
    v = values.double().numpy()
    ok = ~np.isnan(v)
    rows = np.broadcast_to(doc[:, None], v.shape)
    sums = np.bincount(rows[ok], weights=v[ok], minlength=n_docs)
    counts = np.bincount(rows[ok], minlength=n_docs).astype(np.float64)
    return sums, counts


def bootstrap(
    sums: np.ndarray, counts: np.ndarray, draws: np.ndarray, base: tuple | None = None
) -> dict[str, float]:
    """Mean over positions and its 95% percentile interval over resampled documents
    (``draws``: (R, n_docs) document indices). With ``base`` (sums, counts of another system on
    the same positions), the paired difference instead."""

    def stat(s, c):
        return s.sum(-1) / np.maximum(c.sum(-1), 1)

    value = stat(sums, counts)
    boots = stat(sums[draws], counts[draws])
    if base is not None:
        value = value - stat(*base)
        boots = boots - stat(base[0][draws], base[1][draws])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"mean": float(value), "lo": float(lo), "hi": float(hi), "n": int(counts.sum())}


def mi_scores(
    lm: CausalLM, es: EvalSet, texts: dict[str, list[str | None]], positions: Tensor, k: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Paper 2.4.1 MI terms of every candidate sentence at every scored position.

    For position ``(w, n)`` the context is the window's gold sentences ``n-k .. n-1`` (what the
    concept models saw), each followed by ``<sep>``; a candidate ``s`` scores
    ``log p(s | context) - log p(s | <sep>)`` (nats, summed over its tokens) and its token
    count. The prefix is computed once per position for all candidates.

    Args:
        lm: the scoring LM.
        es: the evaluation set (its sentences give the contexts).
        texts: per name, one sentence per row of ``positions`` (``None``: not scored there).
        positions: (M, 2) window and position of each scored concept.
        k: context sentences.

    Returns:
        per name, (M,) log-ratio sums (NaN where not scored) and (M,) token counts (0 there).
    """
    enc: dict[str, list[int]] = {}

    def ids(t: str) -> list[int]:
        if t not in enc:
            enc[t] = lm.encode(t)
        return enc[t]

    m = positions.shape[0]
    cond = {name: np.full(m, np.nan) for name in texts}
    for j, (w, n) in enumerate(positions.tolist()):
        here = sorted({t[j] for t in texts.values() if t[j] is not None})
        if not here:
            continue
        ctx = es.sentences[w][max(0, n - k) : n]
        got = dict(zip(here, lm.score_after(lm.encode_prefix("\n".join(ctx) + "\n"),
                                            [ids(t) for t in here])))  # fmt: skip
        for name, t in texts.items():
            if t[j] is not None:
                cond[name][j] = got[t[j]]
    uniq = sorted(enc, key=lambda t: len(enc[t]))
    uncond: dict[str, float] = {}
    for i in range(0, len(uniq), 128):
        chunk = uniq[i : i + 128]
        uncond.update(zip(chunk, lm.score_after([SEP], [enc[t] for t in chunk])))
    out = {}
    for name, t in texts.items():
        delta = np.array([np.nan if s is None else cond[name][j] - uncond[s]
                          for j, s in enumerate(t)])  # fmt: skip
        count = np.array([0 if s is None else len(enc[s]) for s in t], dtype=np.float64)
        delta[count == 0] = np.nan  # an empty sentence has no MI (paper: per-token value)
        out[name] = (delta, count)
    return out


def mi_per_document(
    delta: np.ndarray, count: np.ndarray, doc: np.ndarray, n_docs: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per document, the sum of log-ratios and of tokens: :func:`bootstrap` of these is the
    token-weighted mean MI in nats per token (the paper's dataset value)."""
    ok = ~np.isnan(delta) & (count > 0)
    sums = np.bincount(doc[ok], weights=delta[ok], minlength=n_docs)
    counts = np.bincount(doc[ok], weights=count[ok], minlength=n_docs)
    return sums, counts


# ---------------------------------------------------------------------------------------------
# Training and teacher-forced predictions
# ---------------------------------------------------------------------------------------------


#: Beside each trained system's checkpoint: what it was fitted on (:func:`fit_record`).
FIT_RECORD = "report_fit.json"


def fit_record(system: str, p: Preset, train_dir: str) -> dict:
    """What a system's fit depends on beyond its run folder's name (preset, steps, width,
    seed): the training data (its folder, and a hash of its recorded shards: names, rows,
    bytes and content hashes, when it is a finished ``lcm prepare`` folder) and the preset's
    other training settings. Written beside the checkpoint, and compared before a checkpoint is
    reused, so a run folder never silently serves other data. ``input_noise`` is recorded only
    when it is > 0, so the records of runs from before the option still match a run without
    it."""
    import hashlib

    from lcm.data.shards import recorded_shards

    shards = None
    if (Path(train_dir) / "summary.json").exists():
        listing = json.dumps(recorded_shards(train_dir), sort_keys=True)
        shards = hashlib.sha256(listing.encode()).hexdigest()
    record = {
        "system": system,
        "train_dir": str(Path(train_dir).resolve()),
        "train_shards_sha256": shards,
        **{
            k: getattr(p, k)
            for k in (
                "steps", "d_model", "ffn_dim", "lr", "warmup_steps", "window",
                "max_concepts_per_batch", "val_check_interval", "seed",
                "contrastive_weight", "temperature",
            )
        },
    }  # fmt: skip
    if p.input_noise > 0:
        record["input_noise"] = p.input_noise
    return record


def train_family(system: str, p: Preset, train_dir: str, root: Path, quiet: bool = True) -> Path:
    """``lcm fit`` one system on ``configs/<family>/tiny.yaml`` with the preset's width
    (``arch.d_model``, ``arch.ffn_dim``; depth and heads stay ``tiny``'s), steps and the
    system's residual; returns the last checkpoint. An existing checkpoint is reused only if
    its :data:`FIT_RECORD` matches this fit (same training data and settings); a mismatch is
    an error naming what differs, and a checkpoint without a record (from before records) is
    reused with a printed warning."""
    from lcm.train.cli import cli_main

    family, residual = split_system(system)
    run_dir = root / system
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    record = fit_record(system, p, train_dir)
    if ckpt.exists():
        path = run_dir / FIT_RECORD
        if not path.exists():
            print(f"[report] reusing {ckpt}: no {FIT_RECORD}, its training data cannot be checked")
            return ckpt
        old = json.loads(path.read_text())
        differ = sorted(k for k in record.keys() | old.keys() if record.get(k) != old.get(k))
        if differ:
            raise ValueError(
                f"{ckpt} was trained with other settings than this report asks for ("
                + "; ".join(f"{k}: {old.get(k)!r} there, {record.get(k)!r} now" for k in differ)
                + "): use another --work_dir, or delete that run folder to retrain it"
            )
        return ckpt
    repo = Path(__file__).resolve().parents[2]
    args = [
        "fit",
        "--config", str(repo / "configs/trainer/default.yaml"),
        "--config", str(repo / f"configs/{family}/tiny.yaml"),
        "--data.data_dir", train_dir,
        "--data.max_seq_len", str(p.window),
        "--data.max_concepts_per_batch", str(p.max_concepts_per_batch),
        "--model.arch.d_model", str(p.d_model),
        "--model.arch.ffn_dim", str(p.ffn_dim),
        "--model.optim.lr", str(p.lr),
        "--model.optim.warmup_steps", str(p.warmup_steps),
        "--model.seed", str(p.seed),
        "--data.seed", str(p.seed),
        "--seed_everything", str(p.seed),
        "--trainer.max_steps", str(p.steps),
        "--trainer.val_check_interval", str(p.val_check_interval),
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--checkpoint.every_n_train_steps", str(p.steps),
    ]  # fmt: skip
    if family == "quant_lcm":
        args += ["--model.rvq_fit_samples", "20000"]
    if residual != "none":
        args += ["--model.residual", residual]
    if p.contrastive_weight > 0:
        if family not in CONTRASTIVE:
            raise ValueError(f"{system}: contrastive_weight is a Base-LCM and refiner option")
        args += ["--model.contrastive_weight", str(p.contrastive_weight)]
        args += ["--model.temperature", str(p.temperature)]
    if p.input_noise > 0:
        args += ["--model.input_noise", str(p.input_noise)]
    import warnings

    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    if quiet:
        import logging

        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    cli_main(args)
    if not ckpt.exists():
        raise RuntimeError(f"{family}: training wrote no {ckpt}")
    (run_dir / FIT_RECORD).write_text(json.dumps(record, indent=1))
    return ckpt


@torch.no_grad()  # not inference_mode: Two-Tower's denoiser plan reads parameter versions
def model_predictions(
    ckpt: Path,
    es: EvalSet,
    batch_windows: int = 32,
    guidance_scale: float | None = None,
    residual_scale: float | None = None,
    quant_decoding: tuple[str, float, float] | None = None,
) -> Tensor:
    """Teacher-forced predictions (B, T, D) in raw space: ``pred[:, n]`` from ``x[:, :n]``
    (diffusion: at ``guidance_scale`` when given, else the checkpoint's; a residual system's
    correction scaled by ``residual_scale`` when given, else the checkpoint's; Quant-LCM with
    ``quant_decoding`` = (decoding, temperature, top_p) when given, else the checkpoint's
    validation decoding: greedy codes)."""
    from lcm.train.module import QuantModule, load_module

    module = load_module(str(ckpt)).eval()
    objective = module.objective
    if guidance_scale is not None:
        objective.sampling = objective.sampling_with(guidance_scale=guidance_scale)
    if residual_scale is not None:
        objective.residual_scale = residual_scale
    if quant_decoding is not None:
        if not isinstance(module, QuantModule):
            raise ValueError(f"{ckpt} is not a Quant-LCM checkpoint: no quant_decoding")
        module.eval_decoding, module.eval_temperature, objective.top_p = quant_decoding
    preds = []
    for i in range(0, es.x.shape[0], batch_windows):
        x, mask = es.x[i : i + batch_windows], es.mask[i : i + batch_windows]
        batch = {
            "x": module.normalizer.normalize(x),
            "mask": mask,
            "loss_mask": mask.clone(),
            "sep_mask": torch.zeros_like(mask),
            "index": torch.arange(i, i + x.shape[0]),
        }
        preds.append(module.predict_step(batch, 0)["pred"].float())
    return torch.cat(preds)


def default_guidance(ckpt: Path) -> float:
    """The guidance scale a diffusion checkpoint samples with by default."""
    from lcm.train.module import load_module

    return float(load_module(str(ckpt)).objective.sampling.guidance_scale)


@torch.no_grad()
def free_running(ckpt: Path, prompts: list[Tensor], n_new: int, seed: int) -> list[Tensor]:
    """Continue each raw prompt (T_i, D) by ``n_new`` concepts generated one after the other,
    each from the prompt and the model's own earlier concepts (the checkpoint's sampling
    settings; repetition and end-of-text stops off). Returns (n_new, D) raw concepts each."""
    from lcm.generation import generate, make_step
    from lcm.train.module import load_module

    module = load_module(str(ckpt)).eval()
    step = make_step(module.eval_objective())
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    out = generate(
        step,
        prompts,
        module.normalizer,
        max_new_concepts=n_new,
        repeat_threshold=2.0,
        generator=generators,
    )
    return out.concepts


def val_curves(run_dir: Path) -> list[tuple[int, float]]:
    """``(step, val/ca)`` from the CSV training log."""
    import csv

    logs = sorted(run_dir.glob("csv/version_*/metrics.csv"))
    points = []
    if logs:
        with open(logs[-1]) as f:
            for row in csv.DictReader(f):
                if row.get("val/ca"):
                    points.append((int(row["step"]), float(row["val/ca"])))
    return points


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def runs_name(preset_name: str, p: Preset) -> str:
    """The folder (under the work dir) of the preset's training runs, one sub-folder per system:
    named by preset, steps, width and seed, plus the contrastive and noise settings when set, so
    runs with other settings never share a folder (the fit record checks the rest)."""
    name = f"runs_{preset_name}_steps{p.steps}_d{p.d_model}_seed{p.seed}"
    if p.contrastive_weight > 0:
        name += f"_cw{p.contrastive_weight:g}_t{p.temperature:g}"
    if p.input_noise > 0:
        name += f"_noise{p.input_noise:g}"
    return name


def run_report(p: Preset, out_dir: str, preset_name: str) -> dict:
    """Train every family, evaluate everything, write the outputs; returns the results."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work" if p.toy else Path(p.train_dir).parent / "pretraining_runs"
    if p.work_dir is not None:
        work = Path(p.work_dir)
    train_dir, eval_dirs = p.train_dir, dict(p.eval_dirs)
    seconds: dict[str, float] = {}
    if p.toy:
        from experiments.pretraining.toy import build_toy

        train_dir, eval_dirs = build_toy(out / "work" / "data")
    inputs = None
    if p.inputs is not None:
        parts = parts_in_use(p.inputs, train_dir, eval_dirs)
        t = time.perf_counter()
        inputs = build_inputs(p.inputs, parts, build=p.prepare_inputs)
        seconds["inputs"] = round(time.perf_counter() - t, 1)
    runs = runs_name(preset_name, p)
    ckpts, reused = {}, []
    for fam in p.families:
        t = time.perf_counter()
        if (work / runs / fam / "checkpoints" / "last.ckpt").exists():
            reused.append(fam)
        ckpts[fam] = train_family(fam, p, train_dir, work / runs)
        seconds[f"train {fam}"] = round(time.perf_counter() - t, 1)

    train_x, train_sents, train_doc = training_arrays(train_dir)
    bank = Bank(train_x, train_sents)
    lm = None
    if p.mi:
        t = time.perf_counter()
        docs: list[list[str]] = [[] for _ in range(int(train_doc.max()) + 1)]
        for s, d in zip(train_sents, train_doc):
            docs[d].append(s)
        lm = train_causal_lm(docs, p.lm_dir or work / "causal_lm", p.lm)
        seconds["causal LM"] = round(time.perf_counter() - t, 1)
    mean = train_x.double().mean(0).float()
    retrieval = RetrievalBaseline(train_x, train_doc, p.retrieval_window)
    rng = np.random.default_rng(p.seed)
    guided = {f: default_guidance(c) for f, c in ckpts.items() if split_system(f)[0] in DIFFUSION}
    g1 = [f for f in guided if p.guidance_one and guided[f] != 1.0]
    labels = {f: system_label(f) for f in ckpts} | {f"{f}@g1": system_label(f"{f}@g1") for f in g1}
    results: dict = {"sets": {}, "systems": {**BASELINES, **labels}}
    for set_name, folder in eval_dirs.items():
        es = load_eval_set(set_name, folder, p.window)
        n_docs = len(es.doc_ids)
        draws = rng.integers(0, n_docs, size=(p.bootstrap, n_docs))
        preds: dict[str, tuple[Tensor, Tensor]] = {
            "copy_previous": copy_previous(es.x, es.mask),
            "context_mean": context_mean(es.x, es.mask),
            "mean_concept": constant_mean(es.x, mean, es.mask),
            "retrieval": retrieval(es.x, es.mask),
        }
        for fam, ckpt in ckpts.items():
            t = time.perf_counter()
            preds[fam] = (model_predictions(ckpt, es), es.mask.clone())
            seconds[f"predict {fam} {set_name}"] = round(time.perf_counter() - t, 1)
            if fam in g1:
                t = time.perf_counter()
                preds[f"{fam}@g1"] = (model_predictions(ckpt, es, guidance_scale=1.0), es.mask)
                seconds[f"predict {fam}@g1 {set_name}"] = round(time.perf_counter() - t, 1)
        # documents by corpus source: the id's prefix before the first "/" (lcm fetch-corpus ids)
        prefixes = np.array([d.split("/")[0] for d in es.doc_ids])
        groups = {src: prefixes == src for src in sorted(set(prefixes))}
        per_doc = {}
        for name, (pred, defined) in preds.items():
            pm = position_metrics(pred, es, defined, bank)
            per_doc[name] = {m: per_document(pm[m], es.doc, n_docs) for m in METRICS}
        mi_ref = {}
        if lm is not None:
            t = time.perf_counter()
            scored_all = es.mask.clone()
            scored_all[:, 0] = False
            positions = scored_all.nonzero()
            texts: dict[str, list[str | None]] = {}
            for name, (pred, defined) in preds.items():
                sel = (defined & es.mask)[scored_all]
                decoded = iter(bank.decode_text(pred[scored_all][sel]) if sel.any() else [])
                sel = sel.tolist()
                texts[name] = [next(decoded) if ok else None for ok in sel]
            gold = [es.sentences[w][n] for w, n in positions.tolist()]
            # its own generator: the bootstrap draws of later sets stay as they were
            perm = np.random.default_rng([p.seed, len(gold)]).permutation(len(gold))
            shuffled = [""] * len(gold)
            for i in range(len(gold)):  # a derangement: never the position's own sentence
                shuffled[perm[i]] = gold[perm[(i + 1) % len(gold)]]
            texts["gold next sentence"], texts["shuffled gold sentence"] = gold, shuffled
            doc_of = es.doc[positions[:, 0].numpy()]
            mi = {
                name: mi_per_document(*v, doc_of, n_docs)
                for name, v in mi_scores(lm, es, texts, positions, p.mi_context).items()
            }
            for ref in ("gold next sentence", "shuffled gold sentence"):
                mi_ref[ref] = bootstrap(*mi[ref], draws)
            mi_ref["gold - shuffled"] = bootstrap(
                *mi["gold next sentence"], draws, base=mi["shuffled gold sentence"]
            )
            seconds[f"mi {set_name}"] = round(time.perf_counter() - t, 1)
        table = {}
        for name in preds:
            row = {m: bootstrap(*per_doc[name][m], draws) for m in METRICS}
            if lm is not None:
                row["mi"] = bootstrap(*mi[name], draws)
            for ref in ("copy_previous", "context_mean"):  # paired, on the same resamples
                if name != ref:
                    row[f"ca_minus_{ref}"] = bootstrap(
                        *per_doc[name]["ca"], draws, base=per_doc[ref]["ca"]
                    )
            scored = es.mask & preds[name][1]
            scored[:, 0] = False
            pred = preds[name][0][scored]
            row["mean_norm"] = float(pred.norm(dim=-1).mean())
            row["by_source"] = {
                src: {
                    m: float(
                        per_doc[name][m][0][sel].sum() / max(per_doc[name][m][1][sel].sum(), 1)
                    )
                    for m in ("l2", "ca")
                }
                for src, sel in groups.items()
            }
            table[name] = row
        # a few teacher-forced predictions decoded into the bank (window 0, positions 1-4)
        examples = []
        for n in range(1, min(5, int(es.mask[0].sum()))):
            examples.append(
                {
                    "context_last": es.sentences[0][n - 1],
                    "gold": es.sentences[0][n],
                    "decoded": {
                        name: bank.decode_text(preds[name][0][0, n][None])[0] for name in preds
                    },
                }
            )
        # free-running continuations of the first documents long enough for prompt + gold
        t = time.perf_counter()
        need = p.prompt_concepts + p.generate_concepts
        rows = [w for w in range(es.x.shape[0]) if int(es.mask[w].sum()) >= need]
        first = {}
        for w in rows:  # the first window of each document
            first.setdefault(int(es.doc[w]), w)
        picked = list(first.values())[: p.generate_docs]
        prompts = [es.x[w, : p.prompt_concepts] for w in picked]
        continuations = []
        if prompts:
            made = {
                fam: free_running(ckpt, prompts, p.generate_concepts, p.seed)
                for fam, ckpt in ckpts.items()
            }
            for k, w in enumerate(picked):
                continuations.append(
                    {
                        "doc": es.doc_ids[int(es.doc[w])],
                        "prompt": es.sentences[w][: p.prompt_concepts],
                        "gold": es.sentences[w][p.prompt_concepts : need],
                        "generated": {fam: bank.decode_text(made[fam][k]) for fam in ckpts},
                    }
                )
        seconds[f"free-running {set_name}"] = round(time.perf_counter() - t, 1)
        results["sets"][set_name] = {
            "examples_doc": es.doc_ids[0],
            "examples": examples,
            "continuations": continuations,
            "folder": folder,
            "documents": n_docs,
            "windows": int(es.x.shape[0]),
            "concepts": int(es.mask.sum()),
            "gold_mean_norm": float(es.x[es.mask].norm(dim=-1).mean()),
            "systems": table,
            "mi_reference": mi_ref,
        }
    results["val_ca_vs_steps"] = {f: val_curves(work / runs / f) for f in ckpts}
    results["missing"] = {}
    if lm is None:
        results["missing"]["mi"] = "switched off (Preset.mi)"
    else:
        results["mi_lm"] = {
            **lm.info,
            "folder": str(p.lm_dir or work / "causal_lm"),
            "definition": MI_DEFINITION.format(k=p.mi_context),
        }
    results["default_guidance"] = guided
    results["setup"] = {
        "preset": preset_name,
        **{k: v for k, v in asdict(p).items() if k not in ("eval_dirs", "inputs")},
        "train_dir": train_dir,
        "eval_dirs": eval_dirs,
        "inputs": inputs,
        "train_concepts": int(train_x.shape[0]),
        "train_documents": int(train_doc.max() + 1),
        "work_dir": str(work / runs),
        "reused_checkpoints": reused,
        "bank_sentences": bank.size,
        "bank": f"{bank.size} unique training sentences (nearest neighbour, l2)",
        "window_rule": f"documents cut into consecutive windows of {p.window} concepts; "
        "every position but a window's first is scored; CA pool = every concept of the set",
        "ci": f"95% percentile bootstrap over documents, {p.bootstrap} resamples",
        "machine": f"{platform.machine()} CPU, torch threads {torch.get_num_threads()}",
        "seconds": seconds,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(markdown(results))
    plots(results, out)
    return results


def fmt(cell: dict | None, digits: int = 3) -> str:
    if cell is None or (isinstance(cell["mean"], float) and math.isnan(cell["mean"])):
        return "n/a"
    return f"{cell['mean']:.{digits}f} [{cell['lo']:.{digits}f}, {cell['hi']:.{digits}f}]"


def _mi_line(res: dict) -> str:
    if "mi" in res.get("missing", {}):
        return f"MI: missing ({res['missing']['mi']})."
    lm = res["mi_lm"]
    c = lm["config"]
    return (
        f"MI: {lm['definition']}: {lm['parameters']:,} parameters ({c['n_layers']} layers, "
        f"d {c['d_model']}, {lm['vocab']} sentencepiece tokens, block {c['block']}), "
        f"{c['steps']} steps of {c['batch']} blocks in {lm['seconds_train']} s, validation "
        f"perplexity {lm['val_perplexity']:.1f} on {lm['val_documents']} held-out training "
        "documents."
    )


def markdown(res: dict) -> str:
    s = res["setup"]
    lines = [
        f"# Pre-training table (preset `{s['preset']}`)",
        "",
        f"Families trained {s['steps']} steps each, d_model {s['d_model']}, ffn {s['ffn_dim']}, "
        f"seed {s['seed']}"
        + (f", input noise {s['input_noise']:g} (training only)" if s.get("input_noise") else "")
        + f", on {s['train_concepts']} concepts ({s['train_documents']} documents)"
        f" of `{s['train_dir']}`. {s['window_rule']}. Intervals: {s['ci']}. l2-r decodes into "
        f"the bank: {s['bank']}. " + _mi_line(res),
        "",
    ]
    if res.get("default_guidance"):
        lines += [
            "Diffusion systems sample with their checkpoint's guidance ("
            + ", ".join(f"{res['systems'][f]} {g:g}" for f, g in res["default_guidance"].items())
            + "); rows `…, guidance 1` are the same checkpoints at guidance 1.",
            "",
        ]
    for set_name, st in res["sets"].items():
        lines += [
            f"## {set_name}: {st['documents']} documents, {st['windows']} windows, "
            f"{st['concepts']} concepts (gold mean norm {st['gold_mean_norm']:.3f})",
            "",
            "| system | l2 | l2-r | PAR | CA | CA - copy-previous | CA - context-mean "
            "| MI | pred norm |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, row in st["systems"].items():
            lines.append(
                f"| {res['systems'][name]} | {fmt(row['l2'])} | {fmt(row['l2_r'])} | "
                f"{fmt(row['par'])} | {fmt(row['ca'])} | "
                f"{fmt(row.get('ca_minus_copy_previous')) if name != 'copy_previous' else '0'}"
                f" | {fmt(row.get('ca_minus_context_mean')) if name != 'context_mean' else '0'}"
                f" | {fmt(row.get('mi'))} | {row['mean_norm']:.3f} |"
            )
        lines.append("")
        if st.get("mi_reference"):
            lines += [
                f"MI references ({set_name}): "
                + "; ".join(f"{k} {fmt(v)}" for k, v in st["mi_reference"].items()),
                "",
            ]
        srcs = list(next(iter(st["systems"].values()))["by_source"])
        if len(srcs) > 1:
            lines += [
                f"CA by source ({set_name}; no intervals):",
                "",
                "| system | " + " | ".join(srcs) + " |",
                "|---|" + "---|" * len(srcs),
            ]
            for name, row in st["systems"].items():
                cells = " | ".join(f"{row['by_source'][x]['ca']:.3f}" for x in srcs)
                lines.append(f"| {res['systems'][name]} | {cells} |")
            lines.append("")
        if st.get("examples"):
            lines += [
                f"Teacher-forced predictions decoded into the bank ({set_name}, "
                f"`{st['examples_doc']}`, first window):",
                "",
            ]
            for k, ex in enumerate(st["examples"], 1):
                lines.append(f"{k}. after: _{ex['context_last']}_ — gold: _{ex['gold']}_")
                for name, text in ex["decoded"].items():
                    lines.append(f"   - {res['systems'][name]}: {text}")
            lines.append("")
        for c in st.get("continuations", []):
            lines += [
                f"Free-running continuation ({set_name}, `{c['doc']}`): each system writes "
                f"{len(c['gold'])} concepts after the prompt, each from the prompt and its own "
                "earlier concepts, decoded into the bank.",
                "",
                "- prompt: " + " ".join(f"_{t}_" for t in c["prompt"]),
                "- gold: " + " ".join(f"_{t}_" for t in c["gold"]),
            ]
            for name, texts in c["generated"].items():
                lines.append(f"- {res['systems'][name]}: " + " / ".join(texts))
            lines.append("")
    lines += ["Seconds: " + ", ".join(f"{k} {v}" for k, v in s["seconds"].items()), ""]
    if s.get("reused_checkpoints"):
        lines += [
            "Reused checkpoints (trained by an earlier run of this report with the same "
            "settings, so their `train` seconds above are only the look-up): "
            + ", ".join(res["systems"][f] for f in s["reused_checkpoints"])
            + ".",
            "",
        ]
    return "\n".join(lines)


def plots(res: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(res["sets"])
    names = list(next(iter(res["sets"].values()))["systems"]) if sets else []
    fig, ax = plt.subplots(figsize=(max(9.0, 0.55 * len(names)), 4.5))
    width = 0.8 / max(len(sets), 1)
    for j, set_name in enumerate(sets):
        rows = res["sets"][set_name]["systems"]
        xs = np.arange(len(names)) + j * width
        means = [rows[n]["ca"]["mean"] for n in names]
        err = [
            [rows[n]["ca"]["mean"] - rows[n]["ca"]["lo"] for n in names],
            [rows[n]["ca"]["hi"] - rows[n]["ca"]["mean"] for n in names],
        ]
        ax.bar(xs, means, width, yerr=err, capsize=3, label=set_name)
    ax.set_xticks(np.arange(len(names)) + width * (len(sets) - 1) / 2)
    ax.set_xticklabels([res["systems"][n] for n in names], rotation=30, ha="right")
    ax.set_ylabel("CA (95% bootstrap CI)")
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.legend()
    ax.set_title("Contrastive accuracy, teacher-forced")
    fig.tight_layout()
    fig.savefig(out / "ca.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for fam, pts in res["val_ca_vs_steps"].items():
        if pts:
            ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", label=res["systems"][fam])
    ax.set_xlabel("training step")
    ax.set_ylabel("validation CA (in-domain, training batches' pool)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "val_ca.png", dpi=120)
    plt.close(fig)


def main(
    preset: str = "full",
    out_dir: str = "reports/pretraining",
    steps: int | None = None,
    train_dir: str | None = None,
    eval_dirs: dict[str, str] | None = None,
    families: str | None = None,
    work_dir: str | None = None,
    seed: int | None = None,
    d_model: int | None = None,
    ffn_dim: int | None = None,
    contrastive_weight: float | None = None,
    temperature: float | None = None,
    input_noise: float | None = None,
    mi: bool | None = None,
    lm_dir: str | None = None,
    lm_steps: int | None = None,
    inputs: InputRecipe | None = None,
    prepare_inputs: bool | None = None,
) -> dict:
    """Train every family on the same data and write the pre-training table.

    Args:
        preset: ``full`` (the committed report) or ``ci`` (seconds, a synthetic corpus).
        out_dir: where results.json, table.md and the plots go.
        steps: override the preset's optimizer steps per family.
        train_dir: override the preset's training shards (an ``lcm prepare`` folder).
        eval_dirs: override the preset's evaluation sets, ``{name: lcm prepare folder}`` (e.g.
            ``'{"held-out python-doc": "shards/ood"}'``).
        families: comma-separated systems, e.g. ``base_lcm,base_lcm+context_mean,two_tower+last``.
        work_dir: where training runs go (a run whose last checkpoint exists is reused).
        seed: override the preset's seed.
        d_model: override the preset's model width.
        ffn_dim: override the preset's feed-forward width.
        contrastive_weight: Base-LCM and refiner systems add this weight of an InfoNCE term to
            the MSE.
        temperature: the InfoNCE term's temperature (default 0.05).
        input_noise: every system trains with Gaussian noise of this std per coordinate on the
            context its network reads (training only, normalized space; default 0: none).
        mi: score MI with the small causal LM (default: the preset's, on).
        lm_dir: where the MI language model is cached (default ``<work_dir>/causal_lm``).
        lm_steps: override the MI language model's training steps.
        inputs: another data recipe for the training and evaluation folders (default: the
            preset's; ``full``: :data:`~experiments.pretraining.inputs.FULL_INPUTS`, built
            under ``data/pretraining``), e.g. ``--inputs.data_dir /big/disk/pretraining``.
        prepare_inputs: build the recipe's missing input folders (fetch the corpus, prepare the
            shards; default true); false: stop with an error naming the missing folders and
            the commands that build them. Complete folders (``summary.json``) are reused.
    """
    if preset not in PRESETS:
        raise SystemExit(f"unknown preset {preset!r}: expected one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    if families is not None:
        systems = tuple(families.split(","))
        for system in systems:
            try:
                split_system(system)
            except ValueError as e:
                raise SystemExit(str(e)) from None
        p = replace(p, families=systems)
    if inputs is not None:
        p = replace(p, inputs=inputs, train_dir=inputs.train_dir, eval_dirs=inputs.eval_dirs)
    overrides = dict(
        steps=steps, train_dir=train_dir, eval_dirs=eval_dirs, work_dir=work_dir, seed=seed,
        d_model=d_model, ffn_dim=ffn_dim, contrastive_weight=contrastive_weight,
        temperature=temperature, input_noise=input_noise, mi=mi, lm_dir=lm_dir,
        prepare_inputs=prepare_inputs,
    )  # fmt: skip
    p = replace(p, **{k: v for k, v in overrides.items() if v is not None})
    if lm_steps is not None:
        p = replace(p, lm=replace(p.lm, steps=lm_steps))
    try:
        res = run_report(p, out_dir, preset)
    except InputsMissing as e:
        raise SystemExit(str(e)) from None
    print(markdown(res))
    return res


if __name__ == "__main__":
    import sys

    from jsonargparse import CLI

    CLI(main, args=sys.argv[1:], as_positional=False)
