"""Plot model - floor (paired bootstrap 95% interval) per cell for each centering setting.

python reports/zero_shot/centering/plot.py   # writes validation.png (and test.png)
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent


def plot(runs: dict[str, Path], out: Path, title: str, step: float = 0.25) -> None:
    """One error bar per (cell, setting): the mean difference and its 95% interval; ``step``
    is the offset between settings within a cell."""
    data = {name: json.loads(p.read_text())["results"] for name, p in runs.items()}
    first = next(iter(data.values()))
    cells = [(lang, t) for lang, row in first.items() for t in row]
    fig, ax = plt.subplots(figsize=(12, 3.8))
    for i, (name, res) in enumerate(data.items()):
        xs, ys, lo, hi = [], [], [], []
        for j, (lang, t) in enumerate(cells):
            s = res[lang][t]
            low, high = s["model_minus_floor_ci95"]
            xs.append(j + step * (i - (len(data) - 1) / 2))
            ys.append(s["model_minus_floor"])
            lo.append(s["model_minus_floor"] - low)
            hi.append(high - s["model_minus_floor"])
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=2, label=name)
    ax.axhline(0, color="k", lw=0.8)
    labels = [f"{lang}->{'en' if t == 'into_en' else lang}" for lang, t in cells]
    ax.set_xticks(range(len(cells)), labels, rotation=45, fontsize=8)
    ax.set_ylabel("model - floor, ROUGE-L x100")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    plot(
        {
            "none": HERE / "valid_none.json",
            "language_mean": HERE / "valid_langmean.json",
            "language_mean_bank": HERE / "valid_langmean_bank.json",
        },
        HERE / "validation.png",
        "validation split (up to 300 documents per language): model - its floor [95% CI]",
    )
    if (HERE / "test_langmean.json").exists():
        plot(
            {
                "none (chosen)": HERE.parent / "results.json",
                "language_mean": HERE / "test_langmean.json",
            },
            HERE / "test.png",
            "test cells: model - its floor [95% CI]",
        )
