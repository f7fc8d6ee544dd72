"""Aggregation of the records into tables, the markdown report and the plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eval.names import CONCEPT_METRICS, LABELS, PLOT_METRICS


# ---------------------------------------------------------------------------------------------
# Aggregation and report
# ---------------------------------------------------------------------------------------------
def _mean(values: list[float | None]) -> tuple[float | None, int]:
    finite = [v for v in values if v is not None]
    return (sum(finite) / len(finite) if finite else None), len(values) - len(finite)


#: How the ``<metric>_ci95`` intervals of the summarization rows are computed.
INTERVAL = "95% bootstrap percentile interval of the mean over documents (2000 resamples, seed 0)"


def bootstrap_interval(
    values: list[float | None], resamples: int = 2000, seed: int = 0
) -> list[float] | None:
    """95% percentile-bootstrap interval ``[low, high]`` of the mean of the defined per-document
    ``values`` (None: fewer than 2). Deterministic (fixed seed); never outside the data's range."""
    import numpy as np

    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if len(x) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)  # (resamples,)
    low, high = np.percentile(means, [2.5, 97.5])
    return [float(low), float(high)]


def ratio_interval(
    numerator: list[float], denominator: list[float], resamples: int = 2000, seed: int = 0
) -> list[float] | None:
    """95% percentile-bootstrap interval ``[low, high]`` of ``mean(numerator) /
    mean(denominator)`` over paired per-document values (the same documents resampled for both,
    e.g. a model's ROUGE-L over its floor's). None with fewer than 2 documents or a resample whose
    denominator mean is 0. Deterministic (fixed seed)."""
    import numpy as np

    if len(numerator) != len(denominator):
        raise ValueError(f"paired values differ in length: {len(numerator)} and {len(denominator)}")
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    if len(num) < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, len(num), size=(resamples, len(num)))
    den_means = den[idx].mean(axis=1)
    if (den_means == 0).any():
        return None
    low, high = np.percentile(num[idx].mean(axis=1) / den_means, [2.5, 97.5])
    return [float(low), float(high)]


def aggregate(
    store,
    names,
    model_info,
    base_specs,
    sweep,
    pair_list,
    pair_docs,
    need,
    model_metrics,
    wanted,
    codec_check,
    floors=(),
) -> dict:
    """Tables from the per-document records of the current configuration (``floors``: the
    codec-only systems of :func:`eval.run._run_doc_mean`)."""
    from eval.metrics.crosslingual import score_translations
    from eval.metrics.text import rouge_l

    summarization: dict[str, list[dict]] = {}
    failures: list[dict] = []
    metric_cols = list(need) + [m for m in model_metrics.missing]
    for p in pair_list:
        rows = []
        docs = pair_docs[p.label]
        systems = [(n, "model", label) for n in names for label, _ in sweep]
        systems += [(f, "floor", "-") for f in floors]
        systems += [(b[0], "baseline", "-") for b in base_specs]
        for system, kind, label in systems:
            recs = [store.records[store.key(kind, system, p.label, label, r.id)] for r, _ in docs]
            good = [r for r in recs if "error" not in r]
            for r in recs:
                if "error" in r:
                    failures.append({k: r[k] for k in ("system", "pair", "setting", "id", "error")})
            row: dict[str, Any] = {
                "system": system,
                "kind": kind,
                "setting": label,
                "documents": len(good),
                "failed": len(recs) - len(good),
            }
            for metric in metric_cols:
                if metric in model_metrics.missing:
                    row[metric] = "missing"
                    continue
                per_doc = [r["metrics"].get(metric) for r in good]
                value, undefined = _mean(per_doc)
                row[metric] = value
                if metric in PLOT_METRICS:
                    row[f"{metric}_ci95"] = bootstrap_interval(per_doc)
                if undefined:
                    row[f"{metric}_undefined"] = undefined
            if kind == "model":
                reasons: dict[str, int] = {}
                for r in good:
                    reasons[r["stop_reason"]] = reasons.get(r["stop_reason"], 0) + 1
                row["stop_reasons"] = dict(sorted(reasons.items()))
            rows.append(row)
        summarization[p.label] = rows
    out: dict[str, Any] = {
        "summarization": summarization,
        "metric_columns": metric_cols,
        "interval": INTERVAL,
        "missing_metrics": dict(model_metrics.missing),
        "failures": failures,
    }
    if codec_check:
        table: dict[str, dict] = {}
        for name in names:
            table[name] = {"codec": model_info[name]["codec"], "pairs": {}}
            for p in pair_list:
                recs = [
                    store.records[store.key("codec", name, p.label, "-", r.id)]
                    for r, _ in pair_docs[p.label]
                ]
                sc = score_translations(
                    [r["hypothesis"] for r in recs], [r["reference"] for r in recs], p.tgt
                )
                table[name]["pairs"][p.label] = {
                    "sentences": len(recs),
                    "bleu": sc.bleu,
                    "chrf": sc.chrf,
                    # fraction, as in the summarization tables: the retrieval ceiling for A->A
                    "rouge_l": rouge_l(
                        [r["hypothesis"] for r in recs], [r["reference"] for r in recs]
                    ).f,
                    "bleu_label": sc.tokenizer.label,
                    "note": sc.tokenizer.note,
                    "bleu_signature": sc.bleu_signature,
                    "chrf_signature": sc.chrf_signature,
                }
        out["codec_check"] = table
    return out


def fmt(value: Any) -> str:
    """How a number appears in report.md (4 decimals; ``n/a`` = undefined everywhere)."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return f"{value:.4f}"


def _stops(reasons: dict[str, int] | None) -> str:
    """``eot 97, max_length 3``: why generation ended (``-`` for baselines)."""
    return ", ".join(f"{k} {v}" for k, v in reasons.items()) if reasons else "-"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + [""]


def _system_label(row: dict, sweep: bool) -> str:
    return (
        f"{row['system']} [{row['setting']}]" if sweep and row["kind"] == "model" else row["system"]
    )


def render_report(results: dict) -> str:
    """report.md from the results (no timings: a resumed run writes the same file)."""
    cfg = results["config"]
    lines = ["# Evaluation report", ""]
    lines.append(
        "Scores are fractions in [0, 1] (ROUGE-L F1 against the reference; OVL-3: share of the "
        "summary's word 3-grams found in the source document; REP-4: share of repeated word "
        "4-grams); words and sentences are means per summary. `n/a`: undefined for every "
        "document (too short); `missing`: the metric's model is not available (reasons below)."
    )
    lines.append("")
    lines.append("Models:")
    for name, info in results["models"].items():
        lines.append(
            f"- `{name}`: `{info['checkpoint']}` ({info['family']}, {info['mode']}, codec "
            f"`{info['codec']}`)"
        )
    for name, info in results["models"].items():
        for lang, b in info.get("banks", {}).items():
            files = "".join(f" and `{f}`" for f in b["files"])
            lines.append(
                f"- bank of `{name}` in {lang}: {b['sentences']} sentences (the training "
                f"shards{files}); references of evaluated documents left out: "
                f"{b['references_left_out']}; still in the bank: {b['references_in_bank']}"
            )
    for name, floor in cfg.get("floors", {}).items():
        lines.append(
            f"- `{floor}`: the document's mean concept decoded in the target language by the "
            f"codec of `{name}` (a floor)"
        )
    lines.append(
        f"\nData: {', '.join(f'`{f}`' for f in cfg['files'])}; documents per language: "
        + ", ".join(f"{k} {v}" for k, v in results["data"]["documents_per_lang"].items())
    )
    lines.append(f"Generation settings: {', '.join(f'`{k}`' for k in cfg['settings'])}.\n")
    cols = results["metric_columns"]
    sweep = len(cfg["settings"]) > 1
    lines.append("## Summarization\n")
    for pair, rows in results["summarization"].items():
        n = results["data"]["pair_documents"][pair]
        lines.append(f"### {pair.replace('->', ' -> ')} ({n} documents)\n")
        header = ["system", "setting", "docs", "failed", *[LABELS.get(c, c) for c in cols]]
        header.append("stopped by")
        body = [
            [r["system"], r["setting"], str(r["documents"]), str(r["failed"])]
            + [fmt(r.get(c)) for c in cols]
            + [_stops(r.get("stop_reasons"))]
            for r in rows
        ]
        lines += _md_table(header, body)
    pairs = [tuple(p.split("->")) for p in results["summarization"]]
    if len(pairs) > 1 or any(a != b for a, b in pairs):
        srcs = sorted({a for a, _ in pairs})
        tgts = sorted({b for _, b in pairs})
        lines.append("## Cross-lingual matrices (rows: source language, columns: target)\n")
        for c in cols:
            lines.append(f"### {LABELS.get(c, c)}\n")
            systems = []
            for rows in results["summarization"].values():
                for r in rows:
                    label = _system_label(r, sweep)
                    if label not in systems:
                        systems.append(label)
            for label in systems:
                cell = {}
                for pair, rows in results["summarization"].items():
                    for r in rows:
                        if _system_label(r, sweep) == label:
                            cell[tuple(pair.split("->"))] = fmt(r.get(c))
                lines.append(f"`{label}`\n")
                body = [[a] + [cell.get((a, b), "-") for b in tgts] for a in srcs]
                lines += _md_table(["source \\ target", *tgts], body)
    if "concepts" in results:
        lines.append("## Teacher-forced next-concept metrics\n")
        lines.append(
            "Paper section 2.4.1, in the codec's space, on the held-out shards "
            f"`{cfg['concept_dir']}`; the CA pool is a batch of {cfg['concept_batch_size']} "
            "documents. mean-concept predicts the mean training concept.\n"
        )
        cmetrics = [m for m in cfg["metrics"] if m in CONCEPT_METRICS]
        for name, res in results["concepts"].items():
            window = (
                "whole documents"
                if res["max_len"] is None
                else f"a window of {res['max_len']} concepts per document"
            )
            by = res["group_by"] + (f" ~ `{res['group_pattern']}`" if res["group_pattern"] else "")
            lines.append(
                f"{name}: {window} (the model trained on {res['model_max_seq_len']}), "
                f"by {by}; at most {cfg['max_documents'] or 'all'} documents per group.\n"
            )
            for group, block in res["groups"].items():
                lines.append(
                    f"### {name}: {group} ({block['documents']} of "
                    f"{block['documents_available']} documents, {res['mode']})\n"
                )
                if block["documents_cut"]:
                    lines.append(
                        f"{block['documents_cut']} documents longer than the window: "
                        f"{block['positions_left_out']} positions left out "
                        + (
                            "(source concepts cut from the context)"
                            if res["mode"] == "summarize"
                            else "(not scored)"
                        )
                        + "; `--concept_max_len whole` scores every concept.\n"
                    )
                header = ["system", "positions", *[LABELS[m] for m in cmetrics]]
                body = [
                    [r["system"], str(r["positions"])]
                    + [
                        "missing" if m in res["missing"] and r.get(m) is None else fmt(r.get(m))
                        for m in cmetrics
                    ]
                    for r in block["systems"]
                ]
                lines += _md_table(header, body)
            for what, why in res["missing"].items():
                lines.append(f"- {what} missing: {why}")
            if res["in_training_shards"]:
                lines.append(
                    f"- warning: {res['in_training_shards']} of these documents are also in the "
                    "model's training shards"
                )
            for nu in res["not_used"]:
                lines.append(f"- not used: {nu['id']}: {nu['reason']}")
            lines.append("")
    if "codec_check" in results:
        lines.append("## Codec cross-lingual check\n")
        lines.append(
            "The codec alone: encode the reference summary in the source language, decode it in "
            "the target language, score against the target-language summary (corpus scores, "
            "0-100; ROUGE-L a fraction as above: with a retrieval codec whose bank lacks the "
            "references, the score of decoding the reference's own concept, a ceiling).\n"
        )
        body = []
        for name, block in results["codec_check"].items():
            for pair, s in block["pairs"].items():
                body.append(
                    [
                        name,
                        f"`{block['codec']}`",
                        pair,
                        str(s["sentences"]),
                        s["bleu_label"],
                        fmt(s["bleu"]),
                        fmt(s["chrf"]),
                        fmt(s.get("rouge_l")),
                    ]
                )
        lines += _md_table(
            ["model", "codec", "pair", "sentences", "BLEU kind", "BLEU", "chrF", "ROUGE-L"], body
        )
        if len(pairs) > 1 or any(a != b for a, b in pairs):
            srcs = sorted({a for a, _ in pairs})
            tgts = sorted({b for _, b in pairs})
            for metric in ("bleu", "chrf", "rouge_l"):
                for name, block in results["codec_check"].items():
                    lines.append(f"### Codec {LABELS[metric]}: `{name}`\n")
                    cell = {tuple(k.split("->")): fmt(v[metric]) for k, v in block["pairs"].items()}
                    body = [[a] + [cell.get((a, b), "-") for b in tgts] for a in srcs]
                    lines += _md_table(["source \\ target", *tgts], body)
        notes = sorted(
            {
                s["note"]
                for b in results["codec_check"].values()
                for s in b["pairs"].values()
                if s["note"]
            }
        )
        lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    lines.append("## Not evaluated\n")
    listed = 0
    for what, why in results["missing_metrics"].items():
        lines.append(f"- metric {LABELS.get(what, what)} missing: {why}")
        listed += 1
    for item in results["data"]["pairs_not_run"]:
        lines.append(f"- {item['reason']}")
        listed += 1
    for row in results["data"]["rows_not_used"]:
        lines.append(f"- {Path(row['file']).name} row {row['row']} ({row['id']}): {row['reason']}")
        listed += 1
    for pair, items in results["data"]["pair_documents_not_used"].items():
        for item in items:
            lines.append(f"- {pair} {item['id']}: {item['reason']}")
            listed += 1
    for f in results["failures"]:
        lines.append(f"- {f['system']} {f['pair']} [{f['setting']}] {f['id']}: {f['error']}")
        listed += 1
    if not listed:
        lines.append("Nothing: every document was evaluated.")
    return "\n".join(lines).rstrip() + "\n"


def plot_table(results: dict, metric: str) -> dict:
    """What the bar chart of ``metric`` shows: the language pairs, and one series per system
    (model, model [setting] in a sweep, baseline) with its value, 95% interval and bar label
    per pair (``0.000`` stays visible as a label; ``n/a``: undefined or missing)."""
    sweep = len(results["config"]["settings"]) > 1
    pairs = list(results["summarization"])
    series: dict[str, dict] = {}
    for i, rows in enumerate(results["summarization"].values()):
        for r in rows:
            label = _system_label(r, sweep)
            s = series.setdefault(
                label,
                {
                    "label": label,
                    "kind": r["kind"],
                    "values": [None] * len(pairs),
                    "intervals": [None] * len(pairs),
                    "labels": ["n/a"] * len(pairs),
                },
            )
            value = r.get(metric)
            if isinstance(value, int | float) and not isinstance(value, bool):
                s["values"][i] = float(value)
                s["intervals"][i] = r.get(f"{metric}_ci95")
                s["labels"][i] = f"{value:.1f}" if metric == "words" else f"{value:.3f}"
            elif isinstance(value, str):
                s["labels"][i] = value
    return {"metric": metric, "pairs": pairs, "series": list(series.values())}


def bar_chart(table: dict):
    """A matplotlib figure of :func:`plot_table`: grouped bars (groups: pairs, colours:
    systems) with interval whiskers and every bar's value written on it; with one pair the
    systems are the x axis (no legend repeating them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs, series = table["pairs"], table["series"]
    label = LABELS.get(table["metric"], table["metric"])
    one = len(pairs) == 1
    n = len(series)
    width = 0.8 if one else 0.8 / max(1, n)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * n if one else 0.45 * n * len(pairs) + 2), 3.8))
    colours = plt.get_cmap("tab10" if n <= 10 else "tab20")
    top = max([hi for s in series for iv in s["intervals"] if iv for hi in iv[1:]]
              + [v for s in series for v in s["values"] if v is not None] + [0.0])  # fmt: skip
    pad = 0.02 * (top or 1.0)
    for k, s in enumerate(series):
        xs = [k] if one else [i + (k - (n - 1) / 2) * width for i in range(len(pairs))]
        heights = [v if v is not None else 0.0 for v in s["values"]]
        hatch = "//" if s["kind"] == "baseline" else None
        ax.bar(xs, heights, width * 0.9, color=colours(k % colours.N), label=s["label"],
               hatch=hatch, edgecolor="black", linewidth=0.5)  # fmt: skip
        for x, v, iv, text in zip(xs, s["values"], s["intervals"], s["labels"], strict=True):
            if iv is not None:
                ax.errorbar([x], [v], yerr=[[v - iv[0]], [iv[1] - v]], color="black",
                            capsize=3, linewidth=1)  # fmt: skip
            if v is not None and v == 0:  # a zero bar has no height: mark it
                ax.plot([x], [0.0], "D", markersize=5, color="black", gid="zero")
            y = (iv[1] if iv is not None else (v or 0.0)) + pad
            ax.text(x, y, text, ha="center", va="bottom", fontsize=7, rotation=90 if n > 6 else 0)
    if one:
        ax.set_xticks(range(n))
        ax.set_xticklabels([s["label"] for s in series], fontsize=8, rotation=20, ha="right")
        ax.set_title(f"{label}, {pairs[0].replace('->', ' -> ')} (whiskers: 95% interval)")
    else:
        ax.set_xticks(range(len(pairs)))
        ax.set_xticklabels([p.replace("->", "\n-> ") for p in pairs], fontsize=8)
        ax.set_title(f"{label} per language pair (whiskers: 95% interval)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_ylabel(label)
    ax.set_ylim(0, top * 1.25 + pad * 4)
    ax.axhline(0, color="black", linewidth=0.8)
    fig.tight_layout()
    return fig


def write_plots(results: dict, out: Path) -> list[str]:
    """``plot_<metric>_by_pair.png`` (:func:`bar_chart`, one per metric, every model and pair)
    and, for a sweep, ``plot_<metric>_by_setting.png`` (the metric against the setting, per
    model and pair, with interval whiskers; dashed lines: baselines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    cfg = results["config"]
    sweep = len(cfg["settings"]) > 1
    cols = [m for m in PLOT_METRICS if m in results["metric_columns"]]
    for metric in cols:
        fig = bar_chart(plot_table(results, metric))
        path = out / f"plot_{metric}_by_pair.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path.name)
        if not sweep:
            continue
        labels = list(cfg["settings"])
        varying = [
            k
            for k in cfg["settings"][labels[0]]
            if len({json.dumps(cfg["settings"][lb][k]) for lb in labels}) > 1
        ]
        numeric = len(varying) == 1 and all(
            isinstance(cfg["settings"][lb][varying[0]], int | float) for lb in labels
        )
        xs = (
            [cfg["settings"][lb][varying[0]] for lb in labels]
            if numeric
            else list(range(len(labels)))
        )
        one_pair = len(results["summarization"]) == 1
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for pair, rows in results["summarization"].items():
            for name in results["models"]:
                ys, low, high = [], [], []
                for lb in labels:
                    r = next(r for r in rows if r["system"] == name and r["setting"] == lb)
                    y = r[metric] if isinstance(r.get(metric), float) else float("nan")
                    iv = r.get(f"{metric}_ci95") or [y, y]
                    ys.append(y)
                    low.append(y - iv[0])
                    high.append(iv[1] - y)
                ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3,
                            label=name if one_pair else f"{name} {pair}")  # fmt: skip
            for r in rows:
                if r["kind"] == "baseline" and isinstance(r.get(metric), float):
                    ax.axhline(r[metric], linestyle="--", linewidth=0.8, color="gray")
                    name = r["system"] if one_pair else f"{r['system']} {pair}"
                    ax.annotate(
                        f"{name} {r[metric]:.3g}", (xs[0], r[metric]), fontsize=6, color="gray"
                    )
        ax.set_xlabel(varying[0] if numeric else "setting")
        if not numeric:
            ax.set_xticks(xs)
            ax.set_xticklabels(labels, fontsize=6, rotation=20)
        ax.set_ylabel(LABELS[metric])
        ax.set_ylim(bottom=0)
        where = f", {next(iter(results['summarization']))}" if one_pair else ""
        ax.set_title(f"{LABELS[metric]} per generation setting{where} (dashed: baselines)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        path = out / f"plot_{metric}_by_setting.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path.name)
    return written
