"""reports/xling_eval: every number in the README's tables is the one in its results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.report import fmt

REPORT = Path(__file__).resolve().parents[1] / "reports" / "xling_eval"
FLORES = {"en": "eng_Latn", "fr": "fra_Latn", "de": "deu_Latn"}
MODEL = "usem3-en-only"
SYSTEMS = {"model": MODEL, "doc-mean": "doc-mean", "lead-1": "lead-1", "lead-3": "lead-3"}
SYSTEMS["random-3"] = "random-3"


def _tables(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """(the heading above, header, rows) of every markdown table."""
    out, heading, lines = [], "", text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("## "):
            heading = lines[i]
        if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in lines[i].strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            out.append((heading, header, rows))
            continue
        i += 1
    return out


def _value(res: dict, column: str, pair: str) -> float:
    codec = res["codec_check"][MODEL]["pairs"][pair]
    rows = {r["system"]: r for r in res["summarization"][pair]}
    if column == "ceiling (codec)":
        return codec["rouge_l"]
    if column.startswith("codec "):
        return codec[column.split()[1].lower()]
    if column in ("words", "OVL-3", "REP-4"):
        return rows[MODEL][{"words": "words", "OVL-3": "ovl3", "REP-4": "rep4"}[column]]
    if column == "doc-mean words":
        return rows["doc-mean"]["words"]
    system = SYSTEMS[column.replace(" ROUGE-L", "")]
    return rows[system]["rouge_l"]


def test_readme_tables_equal_the_json():
    if not (REPORT / "README.md").exists():
        pytest.skip("no report")
    checked = 0
    for heading, header, rows in _tables((REPORT / "README.md").read_text(encoding="utf-8")):
        if "/results.json`" not in heading:
            continue  # the list of folders
        folder = heading[heading.index("`") + 1 : heading.index("/results.json`")]
        res = json.loads((REPORT / folder / "results.json").read_text(encoding="utf-8"))
        for row in rows:
            src, tgt = (FLORES[x] for x in row[0].split(" -> "))
            for column, cell in zip(header[1:], row[1:]):
                assert cell == fmt(_value(res, column, f"{src}->{tgt}")), (
                    folder,
                    row[0],
                    column,
                )
                checked += 1
    assert checked >= 3 * 9 * 4
