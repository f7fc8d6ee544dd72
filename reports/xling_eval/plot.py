"""Heatmaps of the ROUGE-L matrices in results.json: ``python reports/xling_eval/plot.py``.

Writes ``matrices.png`` beside this file: per set (rows), the model, the ``doc-mean`` floor, the
retrieval ceiling (codec round trip) and model minus floor (columns), sources down, targets across.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
LANGS = ("eng_Latn", "fra_Latn", "deu_Latn")
SHORT = ("en", "fr", "de")
MODEL = "usem3-en-only"


def matrices(res: dict) -> dict[str, list[list[float]]]:
    def cell(system: str, pair: str) -> float:
        if system == "ceiling":
            return res["codec_check"][MODEL]["pairs"][pair]["rouge_l"]
        return next(r for r in res["summarization"][pair] if r["system"] == system)["rouge_l"]

    out = {}
    for system in (MODEL, "doc-mean", "ceiling"):
        out[system] = [[cell(system, f"{a}->{b}") for b in LANGS] for a in LANGS]
    out["model - doc-mean"] = [
        [m - f for m, f in zip(rm, rf)] for rm, rf in zip(out[MODEL], out["doc-mean"])
    ]
    return out


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [("debian100", "shipped slice, 100 docs"), ("debian397", "aligned set, 397 docs")]
    fig, axes = plt.subplots(len(sets), 4, figsize=(14, 3.4 * len(sets)))
    for row, (folder, title) in enumerate(sets):
        res = json.loads((HERE / folder / "results.json").read_text(encoding="utf-8"))
        for col, (name, m) in enumerate(matrices(res).items()):
            ax = axes[row][col]
            diff = name == "model - doc-mean"
            ax.imshow(
                m, cmap="RdBu" if diff else "viridis", vmin=-0.05 if diff else 0.0,
                vmax=0.05 if diff else 0.3,
            )  # fmt: skip
            for i in range(3):
                for j in range(3):
                    label = f"{m[i][j]:+.3f}" if diff else f"{m[i][j]:.3f}"
                    color = "black" if diff else "white"
                    ax.text(j, i, label, ha="center", va="center", fontsize=9, color=color)
            ax.set_xticks(range(3), SHORT)
            ax.set_yticks(range(3), SHORT)
            ax.set_xlabel("target")
            ax.set_ylabel("source")
            ax.set_title(f"{'model' if name == MODEL else name}\n{title}", fontsize=9)
    fig.suptitle("ROUGE-L, English-only Base-LCM in USE-m space, retrieval decoding", fontsize=11)
    fig.tight_layout()
    fig.savefig(HERE / "matrices.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
