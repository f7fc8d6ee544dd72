"""Plot model - floor (paired bootstrap 95% interval) per cell for the residual candidates.

python reports/zero_shot/source_mean/plot.py   # writes validation.png and test.png
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "centering"))

from plot import plot  # noqa: E402  (reports/zero_shot/centering/plot.py)

if __name__ == "__main__":
    plot(
        {
            "D context_mean d128 (default)": HERE / "valid_D.json",
            "A source_mean d128": HERE / "valid_A.json",
            "B source_mean d256": HERE / "valid_B.json",
            "C source_mean d256, 400 steps": HERE / "valid_C.json",
            "A1 = A, 1 concept": HERE / "valid_A1.json",
            "B1 = B, 1 concept": HERE / "valid_B1.json",
        },
        HERE / "validation.png",
        "validation split (up to 300 documents per language): model - its floor [95% CI]",
        step=0.13,
    )
    plot(
        {
            "D context_mean d128 (chosen; ../results.json)": HERE.parent / "results.json",
            "B source_mean d256": HERE / "test_B.json",
            "A1 source_mean d128, 1 concept": HERE / "test_A1.json",
        },
        HERE / "test.png",
        "test cells, read after the choice: model - its floor [95% CI]",
    )
