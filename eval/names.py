"""Names shared by the evaluation modules: metric groups, baselines, table labels."""

from __future__ import annotations

#: Per-document summarization metrics; ``length`` gives ``words`` and ``sentences``.
TEXT_METRICS = ("rouge_l", "ovl3", "rep4", "length")
#: Model-scored metrics, reported "missing" when their model is not available locally.
MODEL_METRICS = ("cola", "seahorse-q4", "seahorse-q5")
#: Teacher-forced next-concept metrics (need ``concept_dir``).
CONCEPT_METRICS = ("l2", "l2_r", "par", "ca", "mi")
DEFAULT_BASELINES = ("lead-1", "lead-3", "random-3")
CONCEPT_BASELINES = ("copy-previous", "context-mean", "mean-concept")
LABELS = {
    "rouge_l": "ROUGE-L",
    "ovl3": "OVL-3",
    "rep4": "REP-4",
    "words": "words",
    "sentences": "sentences",
    "cola": "CoLA",
    "seahorse-q4": "SH-4",
    "seahorse-q5": "SH-5",
    "l2": "l2",
    "l2_r": "l2-r",
    "par": "PAR",
    "ca": "CA",
    "mi": "MI",
    "bleu": "BLEU",
    "chrf": "chrF",
}
#: Metrics drawn in the plots.
PLOT_METRICS = ("rouge_l", "ovl3", "rep4", "words")
RECORDS = "documents.jsonl"
