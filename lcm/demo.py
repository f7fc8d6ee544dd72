"""The main job on the offline default: real documents -> concept shards -> a look at them.

    python -m lcm.demo [--out_dir runs/demo] [--docs_per_split 300] [--codec auto|sonar|minilm]

1. fetch real summarization pairs: Debian package descriptions and their one-line synopses
   (``lcm fetch-debian``, through apt; about 20 MB);
2. ``lcm prepare`` the train and valid splits into concept shards (descriptions and synopses);
3. build the retrieval decoder's sentence bank from the train shards and decode held-out
   sentences through it, printing what a concept decodes to.

The codec is SONAR when its weights load (``--codec auto``), else the offline MiniLM codec.
Training and generation plug in here as they land (see the issues in the tracker).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from encoders.base import SentenceCodec


def pick_codec(name: Literal["auto", "sonar", "minilm"]) -> SentenceCodec:
    """SONAR if requested or (``auto``) if its weights load; else the offline MiniLM codec."""
    from encoders.minilm import MiniLMCodec
    from encoders.sonar import SonarCodec, SonarWeightsUnavailable

    if name == "minilm":
        return MiniLMCodec()
    try:
        return SonarCodec().load()
    except SonarWeightsUnavailable as ex:
        if name == "sonar":
            raise
        first = str(ex).splitlines()[0]
        print(f"[demo] {first}\n[demo] using the offline default codec (all-MiniLM-L6-v2)")
        return MiniLMCodec()


def main(
    out_dir: str = "runs/demo",
    docs_per_split: int = 300,
    codec: Literal["auto", "sonar", "minilm"] = "auto",
    show: int = 5,
) -> dict:
    """Run the main job.

    Args:
        out_dir: where data, shards and reports go (rerun to resume).
        docs_per_split: Debian descriptions per split (train gets this many, valid a tenth).
        codec: ``auto`` (SONAR if its weights load, else MiniLM), ``sonar`` or ``minilm``.
        show: how many held-out examples to print.
    """
    import datasets
    import torch
    from rich.console import Console
    from rich.table import Table

    from lcm.corpora.debian import fetch_debian_descriptions
    from lcm.data.prepare import prepare

    console = Console()
    out = Path(out_dir)
    console.rule("1. real data: Debian descriptions -> synopses")
    fetched = fetch_debian_descriptions(
        str(out / "data"), langs=["en"], max_per_split=docs_per_split
    )
    console.print({k: v for k, v in fetched.items() if not isinstance(v, dict | list)})

    console.rule("2. lcm prepare: sentences -> concept shards")
    the_codec = pick_codec(codec)
    summaries = {}
    for split in ("train", "valid"):
        summaries[split] = prepare(
            str(out / "data" / f"debian_descriptions.en.{split}.jsonl"),
            str(out / "shards" / split),
            codec=the_codec,
            target_fields=["summary"],
            shard_size=128,
            progress=False,
        )
    table = Table("split", "documents", "sentences", "rejected", "long re-split", "truncated")
    for split, s in summaries.items():
        table.add_row(
            split,
            str(s["documents"]),
            str(s["sentences"]),
            str(s["rejected"]),
            str(s["long_sentences_resplit"]),
            str(s["truncated_sentences"]),
        )
    console.print(table)

    console.rule("3. decoding concepts back to text")
    train = datasets.load_dataset(
        "parquet", data_files=str(out / "shards" / "train" / "shards" / "*.parquet"), split="train"
    )
    valid = datasets.load_dataset(
        "parquet", data_files=str(out / "shards" / "valid" / "shards" / "*.parquet"), split="train"
    )
    if hasattr(the_codec, "bank"):
        sents = [s for row in train["text_sentences"] for s in row]
        vecs = torch.tensor([v for row in train["text_embeddings"] for v in row])
        the_codec.bank.add(sents, vecs, "eng_Latn")
        console.print(f"retrieval bank: {len(the_codec.bank)} unique train sentences")
    # A train sentence must decode to itself; a held-out one to its nearest train sentence.
    probe = [train[0]["text_sentences"][0]]
    probe_vec = torch.tensor(train[0]["text_embeddings"][:1])
    self_ok = the_codec.decode(probe_vec, "eng_Latn") == probe
    rows = valid.select(range(min(show, valid.num_rows)))
    held = [r["summary_sentences"][0] for r in rows]
    decoded = the_codec.decode(torch.tensor([r["summary_embeddings"][0] for r in rows]), "eng_Latn")
    table = Table(
        "held-out synopsis", "decoded concept", title="valid synopses, encoded then decoded"
    )
    for a, b in zip(held, decoded):
        table.add_row(a, b)
    console.print(table)
    result = {"fetched": fetched.get("counts", {}), "prepare": summaries, "self_decode_ok": self_ok}
    (out / "report.json").write_text(json.dumps(result, indent=2, default=str))
    console.print(f"report: {out / 'report.json'}")
    return result


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, args=sys.argv[1:], as_positional=False)
