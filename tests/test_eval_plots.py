"""The plotted data of `lcm eval`: one series per system, intervals from the per-document
records, zero values labelled, one pair drawn without repeating its row."""

from __future__ import annotations

import numpy as np
import pytest

from eval.report import bar_chart, bootstrap_interval, plot_table, write_plots


def _results(pairs: list[str], settings: int = 1) -> dict:
    rows = []
    for k in range(settings):
        row = {"system": "m", "kind": "model", "setting": f"s{k}", "rouge_l": 0.25}
        rows.append(row | {"rouge_l_ci95": [0.2, 0.3], "words": 7.0, "words_ci95": [6.0, 8.0]})
    rows.append({"system": "lead-1", "kind": "baseline", "setting": "-", "rouge_l": 0.0,
                 "rouge_l_ci95": [0.0, 0.0], "words": 5.0, "words_ci95": None})  # fmt: skip
    rows.append({"system": "random-3", "kind": "baseline", "setting": "-", "rouge_l": None,
                 "words": 9.0})  # fmt: skip
    return {
        "config": {"settings": {f"s{k}": {"max_new_concepts": k + 1} for k in range(settings)}},
        "models": {"m": {}},
        "metric_columns": ["rouge_l", "words"],
        "summarization": {p: [dict(r) for r in rows] for p in pairs},
    }


def test_bootstrap_interval_brackets_the_mean_and_is_deterministic():
    values = [0.1, 0.4, None, 0.3, 0.2, 0.5, 0.0]
    low, high = bootstrap_interval(values)
    mean = np.mean([v for v in values if v is not None])
    assert 0.0 <= low < mean < high <= 0.5
    assert bootstrap_interval(values) == [low, high]
    # about mean -/+ 1.96 standard errors for a larger sample
    x = list(np.random.default_rng(1).normal(0.5, 0.1, 400))
    se = np.std(x, ddof=1) / np.sqrt(len(x))
    low, high = bootstrap_interval(x)
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert bootstrap_interval([0.3]) is None and bootstrap_interval([None, None]) is None
    assert bootstrap_interval([0.0, 0.0, 0.0]) == [0.0, 0.0]


def test_plot_table_has_one_series_per_system_with_intervals_and_zero_labels():
    table = plot_table(_results(["eng_Latn->eng_Latn", "eng_Latn->fra_Latn"]), "rouge_l")
    assert table["pairs"] == ["eng_Latn->eng_Latn", "eng_Latn->fra_Latn"]
    assert [s["label"] for s in table["series"]] == ["m", "lead-1", "random-3"]
    m, lead, rand = table["series"]
    assert m["values"] == [0.25, 0.25] and m["intervals"] == [[0.2, 0.3]] * 2
    assert lead["values"] == [0.0, 0.0] and lead["labels"] == ["0.000", "0.000"]
    assert rand["values"] == [None, None] and rand["labels"] == ["n/a", "n/a"]
    # a sweep: one series per model and setting
    sweep = plot_table(_results(["eng_Latn->eng_Latn"], settings=2), "rouge_l")
    assert [s["label"] for s in sweep["series"]] == ["m [s0]", "m [s1]", "lead-1", "random-3"]


def test_one_pair_puts_systems_on_the_axis_and_zero_bars_are_marked():
    import matplotlib.pyplot as plt

    fig = bar_chart(plot_table(_results(["eng_Latn->eng_Latn"]), "rouge_l"))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["m", "lead-1", "random-3"]
    assert ax.get_legend() is None  # the systems are the axis, not a repeated legend
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["0.250", "0.000", "n/a"]
    zero_marks = [ln for ln in ax.lines if ln.get_gid() == "zero"]
    assert len(zero_marks) == 1 and list(zero_marks[0].get_ydata()) == [0.0]
    assert ax.get_ylim()[1] > 0.3  # the whisker of m fits
    plt.close(fig)
    fig = bar_chart(plot_table(_results(["a->a", "a->b", "b->b"]), "rouge_l"))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["m", "lead-1", "random-3"]
    assert len(ax.texts) == 9
    plt.close(fig)


def test_write_plots_one_chart_per_metric(tmp_path):
    names = write_plots(_results(["eng_Latn->eng_Latn"], settings=2), tmp_path)
    assert names == ["plot_rouge_l_by_pair.png", "plot_rouge_l_by_setting.png",
                     "plot_words_by_pair.png", "plot_words_by_setting.png"]  # fmt: skip
    assert all((tmp_path / n).read_bytes()[:4] == b"\x89PNG" for n in names)
