"""The README tables and plots of the training-data choice, from the JSON beside this file.

python reports/zero_shot/train_docs/tables.py   # prints the tables; writes validation.png, test.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "centering"))

from plot import plot  # noqa: E402  (reports/zero_shot/centering/plot.py)

#: candidate -> its validation JSON (in the order of RULE.md), where it exists
CANDIDATES = {"D": "valid_D.json", "E8": "valid_E8.json", "E8b": "valid_E8b.json"}
CANDIDATES.update({"E16": "valid_E16.json", "E16b": "valid_E16b.json"})


def _cells(res: dict) -> list[tuple[str, str, dict]]:
    return [(lang, t, s) for lang, row in res["results"].items() for t, s in row.items()]


def _name(lang: str, t: str) -> str:
    return f"{lang}->{'en' if t == 'into_en' else lang}"


def _ci(s: dict) -> str:
    lo, hi = s["model_minus_floor_ci95"]
    return f"{s['model_minus_floor']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def summary_row(name: str, res: dict) -> str:
    """One line of the validation summary table."""
    cells = _cells(res)
    above = [_name(lang, t) for lang, t, s in cells if s["vs_floor"] == "above"]
    below = [_name(lang, t) for lang, t, s in cells if s["vs_floor"] == "below"]
    en = res["results"]["en"]["into_en"]
    n = len(cells)
    return " | ".join(
        [
            f"| {name}",
            str(res["train_docs"]),
            str(res["train_steps"]),
            str(en["bank_sentences"]),
            f"{len(above)} ({', '.join(above)})" if above else "0",
            f"{len(below)} ({', '.join(below)})" if below else "0",
            _ci(en),
            f"{sum(s['model_minus_floor'] for *_, s in cells) / n:+.2f}",
            f"{sum(s['model'] for *_, s in cells) / n:.2f} |",
        ]
    )


def cell_rows(runs: dict[str, dict]) -> list[str]:
    """Per validation cell: each run's floor and model - floor [95% CI] verdict."""
    first = next(iter(runs.values()))
    rows = []
    for lang, t, _ in _cells(first):
        parts = [f"| {lang}", "en" if t == "into_en" else lang]
        for res in runs.values():
            s = res["results"][lang][t]
            parts += [f"{s['mean_concept_floor']:.2f}", f"{_ci(s)} {s['vs_floor']}"]
        rows.append(" | ".join(parts) + " |")
    return rows


def test_rows(res: dict) -> list[str]:
    """The test table of one run, as in ../README.md's main table."""
    rows = []
    for lang, t, s in _cells(res):
        rows.append(
            " | ".join(
                [
                    f"| {lang}",
                    "en" if t == "into_en" else lang,
                    f"{s['model']:.2f}",
                    f"{s['lead_1']:.2f}" if "lead_1" in s else "-",
                    f"{s['mean_concept_floor']:.2f}",
                    f"{s['ceiling']:.2f}",
                    _ci(s),
                    s["vs_floor"],
                    f"{s['documents']} of {s['aligned_documents']}",
                    f"{s['bank_sentences']} |",
                ]
            )
        )
    return rows


def load() -> dict[str, dict]:
    return {
        name: json.loads((HERE / f).read_text())
        for name, f in CANDIDATES.items()
        if (HERE / f).exists()
    }


if __name__ == "__main__":
    runs = load()
    for name, res in runs.items():
        print(summary_row(name, res))
    print()
    print("\n".join(cell_rows(runs)))
    for f in sorted(HERE.glob("test_*.json")):
        print(f"\n{f.name}")
        print("\n".join(test_rows(json.loads(f.read_text()))))
    plot(
        {
            f"{n} ({r['train_docs']} docs, English bank {r['en_bank_docs']})": HERE / CANDIDATES[n]
            for n, r in runs.items()
        },
        HERE / "validation.png",
        "validation split (up to 300 documents per language): model - its floor [95% CI]",
        step=0.15,
    )
    if (HERE / "test_E16.json").exists():
        plot(
            {
                "D, 2000 docs (default; ../results.json)": HERE.parent / "results.json",
                "E16, 16000 docs (chosen on validation)": HERE / "test_E16.json",
            },
            HERE / "test.png",
            "test cells, read once after the choice: model - its floor [95% CI]",
        )
