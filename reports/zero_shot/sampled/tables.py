"""The README tables and plot of the test cells on a seeded sample, from the JSON beside this file.

python reports/zero_shot/sampled/tables.py   # prints the tables; writes test.png

The rows are those of ../train_docs/tables.py (one implementation); the head-of-split runs they
replace are ../results.json (D) and ../train_docs/test_E16.json (E16); E8's test cells were
never read on the head.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location(
    "train_docs_tables", HERE.parent / "train_docs/tables.py"
)
tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tables)

#: run -> (its JSON on the seeded sample, the same run on the head of each split, if read)
RUNS = {
    "D": ("test_D.json", HERE.parent / "results.json"),
    "E8": ("test_E8.json", None),
    "E16": ("test_E16.json", HERE.parent / "train_docs/test_E16.json"),
}
#: validation runs on the seeded sample, where they exist
VALID = {n: f"valid_{n}.json" for n in ("D", "E8", "E8b", "E16", "E16b")}


def counts(res: dict) -> str:
    """The README's sentence of one run's counts of the 7 non-English languages."""
    langs = [x for x in res["results"] if x != "en"]
    above = {
        t: [x for x in langs if res["results"][x][t]["vs_floor"] == "above"]
        for t in ("into_en", "into_own")
    }
    below = [tables._name(lang, t) for lang, t, s in tables._cells(res) if s["vs_floor"] == "below"]
    n = len(langs)
    return (
        f"above the floor into English for {len(above['into_en'])} of {n} "
        f"({', '.join(above['into_en']) or 'none'}), into the source language for "
        f"{len(above['into_own'])} of {n} ({', '.join(above['into_own']) or 'none'}), "
        f"below in {', '.join(below) or 'none'}"
    )


def load(which: str = "test") -> dict[str, dict]:
    files = {n: f for n, (f, _) in RUNS.items()} if which == "test" else VALID
    return {n: json.loads((HERE / f).read_text()) for n, f in files.items() if (HERE / f).exists()}


if __name__ == "__main__":
    for name, res in load().items():
        print(f"\n{RUNS[name][0]}: {counts(res)}")
        print("\n".join(tables.test_rows(res)))
    valid = load("valid")
    for name, res in valid.items():
        print(tables.summary_row(name, res))
    if len(valid) > 1:
        print("\n".join(tables.cell_rows(valid)))
    runs = {}
    for n, (f, head) in RUNS.items():
        runs[f"{n}, seeded sample ({f})"] = HERE / f
        if head is not None:
            runs[f"{n}, head of split (old)"] = head
    tables.plot(
        runs,
        HERE / "test.png",
        "test cells: model - its floor [95% CI], seeded sample vs head of split",
        step=0.18,
    )
