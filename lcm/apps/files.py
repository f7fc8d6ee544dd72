"""``lcm summarize`` / ``lcm generate``: jsonl in, jsonl out, resumable.

Each input row becomes one output row ``{id, source_lang, target_lang, output, concepts,
stop_reason}`` (plus ``exit_steps`` for the refiner); a row that cannot be used gets ``error``
instead of ``output`` (nothing is skipped silently). Rows are appended and flushed batch by
batch, so a rerun after an interruption skips the ids already written and finishes the file.
A rerun retries the rows that failed (their error rows are replaced), and refuses to add to a
file made with other settings: ``<output>.settings.json`` records them.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from encoders.base import SentenceCodec
from encoders.langs import UnknownLanguageError
from lcm.api import ConceptModel, Settings
from lcm.progress import Progress


def generate_file(
    checkpoint: str,
    inputs: str,
    output: str,
    task: Literal["summarize", "continue"] = "summarize",
    text_field: str = "text",
    id_field: str = "id",
    lang_field: str | None = "lang",
    source_lang: str = "eng_Latn",
    target_lang: str | None = None,
    batch_size: int = 8,
    settings: Settings | None = None,
    codec: SentenceCodec | None = None,
    shards: str | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Summarize (or continue) every document of a jsonl file with a trained checkpoint.

    Args:
        checkpoint: a ``.ckpt`` written by ``lcm fit``.
        inputs: jsonl file with one document per line.
        output: jsonl file to append results to (rerun to resume).
        task: ``summarize`` (source, separator, summary) or ``continue`` (next sentences).
        text_field: the document text field.
        id_field: the document id field (missing: the line number).
        lang_field: per-row source language field; rows without it use ``source_lang``.
        source_lang: FLORES-200 code of documents without a language field.
        target_lang: FLORES-200 code to write in (default: each document's language).
        batch_size: documents generated together.
        settings: generation settings, e.g. ``--settings.max_new_concepts 3 --settings.seed 1``
            (diffusion steps and guidance, the refiner's exit rule, Quant-LCM's temperature).
        codec: sentence codec (default: the one the model was trained with).
        shards: prepared folder whose sentences fill a retrieval codec's bank (default: the
            training shards the checkpoint records).
        device: ``cpu`` or ``cuda``.
        progress: show progress (documents/s, ETA): a bar in a terminal, plain lines at least
            every 30 s in a log file (``LCM_PROGRESS_INTERVAL`` sets the seconds).
    """
    settings = settings or Settings()
    out_path = Path(output)
    lines, torn = _read_results(out_path)
    kept = [x for x in lines if "error" not in json.loads(x)]  # failed rows are retried
    _check_settings(
        out_path,
        {
            "checkpoint": str(Path(checkpoint).resolve()),
            "task": task,
            "target_lang": target_lang,
            "settings": asdict(settings),
        },
        has_results=bool(kept),
    )
    model = ConceptModel.load(checkpoint, codec=codec, device=device, shards=shards)
    if torn or len(kept) < len(lines):
        tmp = out_path.with_name(out_path.name + ".tmp")
        tmp.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
        tmp.replace(out_path)
    done = {json.loads(x)["id"] for x in kept}
    rows = []
    with open(inputs, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                rec = json.loads(line)
                rec.setdefault(id_field, str(i))
                rec[id_field] = str(rec[id_field])
                rows.append(rec)
    todo = [r for r in rows if r[id_field] not in done]
    counts = {
        "documents": len(rows),
        "already_done": len(rows) - len(todo),
        "written": 0,
        "errors": 0,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "a", encoding="utf-8") as out:
        bar = Progress("generate", len(todo), "documents", progress, prefix=f"lcm {task}")
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            ok, results = [], []
            for r in batch:
                src = (r.get(lang_field) if lang_field else None) or source_lang
                tgt = target_lang or src
                res = {"id": r[id_field], "source_lang": src, "target_lang": tgt}
                text = r.get(text_field)
                try:
                    model.codec.validate_lang(src, f"row {r[id_field]}")
                    model.codec.validate_lang(tgt, "target_lang")
                    if not isinstance(text, str) or not text.strip():
                        raise ValueError(f"missing or empty field {text_field!r}")
                    ok.append((r, res, text))
                except (UnknownLanguageError, ValueError) as ex:
                    res["error"] = str(ex)
                results.append(res)
            # Documents of one batch share a source language per call.
            by_lang: dict[tuple[str, str], list] = {}
            for item in ok:
                by_lang.setdefault((item[1]["source_lang"], item[1]["target_lang"]), []).append(
                    item
                )
            for (src, tgt), items in by_lang.items():
                gen = model.predict_concepts(
                    [t for _, _, t in items], src, settings, add_separator=task == "summarize"
                )
                texts = model._render(gen, tgt)
                for j, ((_, res, _), text, concepts, reason) in enumerate(
                    zip(items, texts, gen.concepts, gen.stop_reasons)
                ):
                    res.update(output=text, concepts=len(concepts), stop_reason=reason)
                    if "exit_step" in gen.extras:  # the refiner's iterations per sentence
                        res["exit_steps"] = gen.extras["exit_step"][j].tolist()
            for res in results:
                out.write(json.dumps(res, ensure_ascii=False) + "\n")
                counts["written"] += 1
                counts["errors"] += "error" in res
            out.flush()
            bar.update(len(batch))
        bar.close()
    return counts


def _read_results(out_path: Path) -> tuple[list[str], bool]:
    """The result lines already in ``out_path`` and whether its last line was cut short.

    A run killed while writing can leave its last line without its end (``kill -9``, a full
    disk): that line is dropped and its document generated again. Any other line that is not
    JSON is an error naming it (the file was changed by something else; nothing is dropped)."""
    if not out_path.exists():
        return [], False
    text = out_path.read_text(encoding="utf-8")
    lines = text.split("\n")  # a complete file ends with "\n": the last item is ""
    kept, torn = [], False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "id" not in row:
                raise ValueError("not a result row (a JSON object with an id)")
        except ValueError as ex:
            if number == len(lines):  # the unfinished last line of an interrupted write
                print(
                    f"{out_path}: line {number} was cut short by an interrupted run; "
                    "its document is generated again",
                    file=sys.stderr,
                )
                torn = True
                continue
            raise ValueError(
                f"{out_path}, line {number}: {ex}. The file holds something other than this "
                "command's results: write to a new --output"
            ) from ex
        kept.append(line)
    return kept, torn


def _check_settings(out_path: Path, wanted: dict, has_results: bool) -> None:
    """Record the run's settings beside ``out_path``; refuse to add to a file whose results
    were made with other settings."""
    meta = out_path.with_name(out_path.name + ".settings.json")
    if meta.exists() and has_results:
        had = json.loads(meta.read_text())
        differ = sorted(
            k
            for k in {*had, *wanted}
            if json.dumps(had.get(k), sort_keys=True) != json.dumps(wanted.get(k), sort_keys=True)
        )
        if differ:
            raise ValueError(
                f"{out_path} was made with other settings ({', '.join(differ)} differ; see "
                f"{meta.name}): write to a new --output, or delete both files to start over"
            )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(wanted, indent=2, sort_keys=True))
