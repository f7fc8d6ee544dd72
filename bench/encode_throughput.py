"""Encoding throughput: SonarCodec (corpus-wide length-sorted batches) vs the stock
sonar-space pipeline called once per document, measured side by side in one run.

    python bench/encode_throughput.py                 # tiny SONAR on CPU (always available)
    python bench/encode_throughput.py --real true --device cuda   # real SONAR, if its weights exist

Prints sentences/s for each and the ratio (goal: >= 3x). Absolute numbers swing with machine
load; compare the ratio only.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = (
    "the cat dog sat on mat a red blue house runs quickly slowly big small tree river bird "
    "sings today yesterday green sun moon"
).split()


def make_docs(n_docs: int, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    return [
        [
            " ".join(rng.choices(WORDS, k=rng.randint(4, 30))) + "."
            for _ in range(rng.randint(3, 12))
        ]
        for _ in range(n_docs)
    ]


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(
    real: bool = False,
    device: str = "cpu",
    docs: int = 200,
    repeats: int = 3,
    batch_max_tokens: int = 8192,
    sizes: str = "64x2,256x4",
) -> None:
    """Encoding throughput: SonarCodec against the stock pipeline called per document.

    Args:
        real: use the real ``text_sonar_basic_encoder`` (its weights must be available).
        device: torch device.
        docs: documents encoded.
        repeats: timed repeats (the median is reported).
        batch_max_tokens: token budget of one encoder batch.
        sizes: tiny SONAR sizes as WIDTHxLAYERS, comma-separated (ignored with ``real``).
    """
    args = SimpleNamespace(**locals())

    if args.real:
        run(args, "text_sonar_basic_encoder")
        return
    card_dir = Path(tempfile.mkdtemp(prefix="bench-cards-"))
    os.environ["FAIRSEQ2_USER_ASSET_DIR"] = str(card_dir)
    from encoders.tiny_sonar import build_tiny_sonar

    names = []
    for size in args.sizes.split(","):  # all cards first: fairseq2 reads the folder once
        width, layers = (int(v) for v in size.split("x"))
        names.append(f"tiny{width}x{layers}")
        build_tiny_sonar(
            card_dir, name=names[-1], model_dim=width, num_layers=layers, max_seq_len=128
        )
    for name in names:
        run(args, f"{name}_encoder")


def run(args, encoder: str) -> None:
    import torch
    from sonar.inference_pipelines.text import TextToEmbeddingModelPipeline

    from encoders.sonar import SonarCodec

    codec = SonarCodec(encoder, device=args.device, batch_max_tokens=args.batch_max_tokens).load()
    docs = make_docs(args.docs)
    n = sum(len(d) for d in docs)
    stock = TextToEmbeddingModelPipeline(
        codec.encoder, codec.tokenizer, device=torch.device(args.device)
    )

    def per_document():
        for d in docs:
            stock.predict(d, source_lang="eng_Latn", batch_size=len(d))

    flat = [s for d in docs for s in d]

    def corpus_batched():
        codec.encode(flat, "eng_Latn")  # no cache attached: every call encodes everything

    t_stock = timed(per_document, args.repeats)
    t_codec = timed(corpus_batched, args.repeats)
    print(f"model: {encoder} on {args.device}; {len(docs)} documents, {n} sentences")
    print(f"  stock pipeline, one call per document : {n / t_stock:10.1f} sentences/s")
    print(f"  SonarCodec, corpus-wide sorted batches: {n / t_codec:10.1f} sentences/s")
    print(f"  ratio: {t_stock / t_codec:.2f}x (goal >= 3x)")


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
