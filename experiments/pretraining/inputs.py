"""The full pre-training report's inputs, built on a fresh clone with the toolkit's own commands.

:class:`InputRecipe` is the one definition of the ``full`` preset's data: an English corpus
from documentation Debian ships (:func:`lcm.corpora.prose.fetch_corpus`, ``lcm fetch-corpus``),
whose training sample and the first rows of its in-domain test split and of its held-out source
are turned into concept shards by :func:`lcm.data.prepare.prepare` (``lcm prepare``).
:func:`build_inputs` runs those steps for the folders that are missing, prints a line per step,
and returns a record of what it did (the report keeps it in ``results.json``, ``setup.inputs``).

A prepared folder with ``summary.json`` is complete and reused as it is. One without it was
interrupted: ``lcm prepare`` resumes it (finished shards are kept), or refuses it with an error
that names the settings that differ. The equivalent shell commands are
:meth:`InputRecipe.commands`. Alone, without the report::

    python -m experiments.pretraining.inputs                    # the full preset's inputs
    python -m experiments.pretraining.inputs --recipe.data_dir /big/disk/pretraining
"""

from __future__ import annotations

import importlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Part = Literal["train", "test", "heldout"]
PARTS: tuple[Part, ...] = ("train", "test", "heldout")
TEST_SET = "in-domain test"
HELDOUT_SET = "held-out python-doc"


class InputsMissing(FileNotFoundError):
    """A prepared input folder is missing and building it was turned off."""


@dataclass(frozen=True)
class InputRecipe:
    """The data of the ``full`` pre-training report: how its inputs are built.

    Attributes:
        data_dir: Folder of the corpus (``<data_dir>/corpus``) and the prepared shards
            (``<data_dir>/shards``); a relative path is relative to the working directory
            (the repository root in the README's commands).
        sample_sentences: The training documents are the first rows of the corpus's training
            split (in its seeded order) whose sentences add up to at least this many
            (``lcm fetch-corpus --sample_sentences``); 31996 is the smallest value that gives
            the committed report's 4,499 training documents.
        test_rows: The in-domain test set is the first this many rows of ``corpus.test.jsonl``.
        heldout_rows: The held-out set is the first this many rows of ``corpus.ood.jsonl``
            (python-doc, a source kept out of training).
        codec: Import path of the sentence codec every set is encoded with (``lcm prepare
            --codec``); the default is the offline MiniLM codec.
    """

    data_dir: str = "data/pretraining"
    sample_sentences: int = 31996
    test_rows: int = 200
    heldout_rows: int = 80
    codec: str = "encoders.minilm.MiniLMCodec"

    def __post_init__(self) -> None:
        if min(self.sample_sentences, self.test_rows, self.heldout_rows) < 1:
            raise ValueError(f"sample_sentences, test_rows and heldout_rows must be >= 1: {self}")

    @property
    def corpus_dir(self) -> str:
        """The ``lcm fetch-corpus`` output folder."""
        return str(Path(self.data_dir) / "corpus")

    @property
    def train_dir(self) -> str:
        """The prepared training shards."""
        return str(Path(self.data_dir) / "shards" / f"train{self.sample_sentences}")

    @property
    def eval_dirs(self) -> dict[str, str]:
        """``{set name: prepared folder}`` of the two evaluation sets."""
        shards = Path(self.data_dir) / "shards"
        return {
            TEST_SET: str(shards / f"test{self.test_rows}"),
            HELDOUT_SET: str(shards / f"ood{self.heldout_rows}"),
        }

    def folder(self, part: Part) -> str:
        """The prepared folder of ``part``."""
        if part == "train":
            return self.train_dir
        return self.eval_dirs[TEST_SET if part == "test" else HELDOUT_SET]

    def source(self, part: Part) -> tuple[str, str, int | None]:
        """``(corpus file, file prepared, rows)`` of ``part``: the training sample is prepared
        whole (rows None); an evaluation set is the first ``rows`` lines of its split file."""
        corpus = Path(self.corpus_dir)
        if part == "train":
            path = str(corpus / "corpus.train.sample.jsonl")
            return path, path, None
        split, rows = ("test", self.test_rows) if part == "test" else ("ood", self.heldout_rows)
        return (
            str(corpus / f"corpus.{split}.jsonl"),
            str(corpus / f"corpus.{split}.first{rows}.jsonl"),
            rows,
        )

    def commands(self, parts: tuple[Part, ...] = PARTS) -> list[str]:
        """The shell commands that build ``parts`` by hand (what :func:`build_inputs` runs)."""
        fetch = f"lcm fetch-corpus --out_dir {self.corpus_dir}"
        cmds = [f"{fetch} --sample_sentences {self.sample_sentences}"]
        for part in parts:
            src, file, rows = self.source(part)
            if rows is not None:
                cmds.append(f"head -n {rows} {src} > {file}")
            cmds.append(
                f"lcm prepare --inputs {file} --output_dir {self.folder(part)} --codec {self.codec}"
            )
        return cmds


FULL_INPUTS = InputRecipe()
"""The ``full`` preset's recipe (the committed report's data)."""


def complete(folder: str | Path) -> bool:
    """An ``lcm prepare`` folder that ran to the end (it has ``summary.json``)."""
    return (Path(folder) / "summary.json").exists()


def make_codec(path: str):
    """An instance of the codec class at import path ``path`` (``package.module.Class``),
    built with its defaults, as ``lcm prepare --codec path`` does."""
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"codec {path!r}: expected an import path package.module.Class")
    return getattr(importlib.import_module(module), name)()


def parts_in_use(
    recipe: InputRecipe, train_dir: str | None, eval_dirs: dict[str, str]
) -> tuple[Part, ...]:
    """The parts of ``recipe`` whose folders a report reads (``train_dir`` or one of
    ``eval_dirs``); a folder given instead of the recipe's is the caller's, never built."""
    used = {train_dir, *eval_dirs.values()}
    return tuple(part for part in PARTS if recipe.folder(part) in used)


def _say(msg: str) -> None:
    print(f"[inputs] {msg}", flush=True)


def _corpus_ready(recipe: InputRecipe, parts: tuple[Part, ...]) -> bool:
    manifest = Path(recipe.corpus_dir) / "corpus.manifest.json"
    if not manifest.exists():
        return False
    settings = json.loads(manifest.read_text()).get("settings", {})
    if "train" in parts and settings.get("sample_sentences") != recipe.sample_sentences:
        return False
    return all(Path(recipe.source(p)[0]).exists() for p in parts)


def _first_rows(src: str, dst: str, rows: int) -> int:
    """Write the first ``rows`` lines of ``src`` to ``dst`` (atomically); returns how many."""
    lines = []
    with open(src, encoding="utf-8") as f:
        for line in f:
            if len(lines) == rows:
                break
            if line.strip():
                lines.append(line if line.endswith("\n") else line + "\n")
    tmp = Path(dst).with_name(f".{Path(dst).name}.{os.getpid()}.tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, dst)
    return len(lines)


def _counts(folder: str) -> dict:
    s = json.loads((Path(folder) / "summary.json").read_text())
    return {"documents": s["documents"], "sentences": s["sentences"], "rejected": s["rejected"]}


def build_inputs(
    recipe: InputRecipe = FULL_INPUTS,
    parts: tuple[Part, ...] = PARTS,
    build: bool = True,
    progress: bool = True,
) -> dict:
    """Make sure the prepared folders of ``parts`` exist, building the missing ones.

    Args:
        recipe: what to build, and where.
        parts: which prepared folders are needed (``train``, ``test``, ``heldout``).
        build: build a missing folder (fetch the corpus if it is not there, cut the evaluation
            rows, ``lcm prepare``); False: raise :class:`InputsMissing`, naming the missing
            folders and the commands that build them.
        progress: progress bars of fetching and encoding.

    Returns:
        ``{"recipe", "commands", "corpus", "sets"}``: the recipe, the equivalent shell
        commands, what fetching did (None when the corpus was not needed) and, per part, its
        folder, the file it was prepared from, its rows, its counts (from ``summary.json``),
        whether it was ``built``, ``resumed`` or ``reused``, and the seconds it took.
    """
    missing = [p for p in parts if not complete(recipe.folder(p))]
    if missing and not build:
        folders = "\n".join(f"  {recipe.folder(p)}" for p in missing)
        cmds = "\n".join(f"  {c}" for c in recipe.commands(tuple(missing)))
        raise InputsMissing(
            f"missing prepared input folder(s) (no summary.json):\n{folders}\n"
            f"build them with --prepare_inputs true, or by hand:\n{cmds}"
        )
    record: dict = {"recipe": asdict(recipe), "commands": recipe.commands(parts), "corpus": None}
    sets: dict[str, dict] = {}
    if missing:
        t = time.perf_counter()
        if _corpus_ready(recipe, tuple(missing)):
            _say(f"corpus {recipe.corpus_dir}: complete, reused")
            fetched = False
        else:
            from lcm.corpora.prose import fetch_corpus

            _say(
                f"fetching the corpus into {recipe.corpus_dir} (lcm fetch-corpus, "
                f"sample_sentences={recipe.sample_sentences}; apt downloads are reused)"
            )
            fetch_corpus(
                recipe.corpus_dir, sample_sentences=recipe.sample_sentences, progress=progress
            )
            fetched = True
        manifest = json.loads((Path(recipe.corpus_dir) / "corpus.manifest.json").read_text())
        seconds = round(time.perf_counter() - t, 1)
        record["corpus"] = {
            "folder": recipe.corpus_dir,
            "fetched": fetched,
            "seconds": seconds,
            "splits": manifest.get("splits"),
            "train_sample": manifest.get("train_sample"),
        }
        if fetched:
            _say(f"corpus done in {seconds} s: {manifest.get('splits')}")
    codec = None
    for i, part in enumerate(parts, 1):
        folder = recipe.folder(part)
        src, file, rows = recipe.source(part)
        entry = {"folder": folder, "input": file, "source": src, "rows": rows}
        if part not in missing:
            _say(f"{i}/{len(parts)} {part}: {folder} complete (summary.json), reused")
            sets[part] = {**entry, **_counts(folder), "status": "reused", "seconds": 0.0}
            continue
        t = time.perf_counter()
        if rows is not None and not Path(file).exists():
            got = _first_rows(src, file, rows)
            _say(f"{i}/{len(parts)} {part}: the first {got} rows of {src} -> {file}")
        resumed = (Path(folder) / "manifest.json").exists()
        _say(
            f"{i}/{len(parts)} {part}: {'resuming' if resumed else 'preparing'} {file} -> "
            f"{folder} (lcm prepare, codec {recipe.codec})"
        )
        if codec is None:
            codec = make_codec(recipe.codec)
        from lcm.data.prepare import prepare

        try:
            prepare(file, folder, codec=codec, progress=progress)
        except ValueError as e:
            raise ValueError(
                f"{folder} is an interrupted `lcm prepare` folder that cannot be resumed ({e}); "
                "delete it and run again"
            ) from e
        counts = _counts(folder)
        status = "resumed" if resumed else "built"
        sets[part] = {
            **entry,
            **counts,
            "status": status,
            "seconds": round(time.perf_counter() - t, 1),
        }
        _say(
            f"{i}/{len(parts)} {part}: {status} in {sets[part]['seconds']} s: "
            f"{counts['documents']} documents, {counts['sentences']} sentences"
        )
    record["sets"] = sets
    return record


def main(recipe: InputRecipe = FULL_INPUTS, parts: tuple[Part, ...] = PARTS) -> dict:
    """Build the full pre-training report's inputs (what ``--preset full`` does first).

    Args:
        recipe: what to build, and where (default: the ``full`` preset's recipe).
        parts: which prepared folders to build.
    """
    return build_inputs(recipe, tuple(parts))


if __name__ == "__main__":
    import sys

    from jsonargparse import CLI

    print(json.dumps(CLI(main, args=sys.argv[1:], as_positional=False), indent=2))
