"""Evaluation of Large Concept Models: metrics and baselines (LCM paper sections 2.4 and 3-4).

- :mod:`eval.metrics.concepts`: next-concept metrics in codec space (l2, l2-r, PAR, CA, MI).
- :mod:`eval.metrics.text`: summarization metrics (ROUGE-L, OVL-3, REP-4, lengths).
- :mod:`eval.metrics.model_based`: model-scored metrics (CoLA, SEAHORSE) and the LM for MI, which
  report "missing" instead of a value when their model is not available locally.
- :mod:`eval.metrics.crosslingual`: encode in one language, decode in another, score with
  sacrebleu.
- :mod:`eval.baselines`: lead-k and random-k summaries; copy-previous and mean-concept
  predictors.
- :mod:`eval.run`: the one-command runner (``lcm-eval``, ``python -m eval``, ``lcm eval``) over
  checkpoints, language pairs, generation settings and baselines, in parts: reading inputs
  (:mod:`eval.inputs`), the resumable record store (:mod:`eval.records`), text evaluation
  (:mod:`eval.text_eval`), concept-space evaluation (:mod:`eval.concept_eval`) and the report
  with its plots (:mod:`eval.report`); ``eval/data/`` holds the shipped real evaluation data.

Nothing heavy is imported here; import the submodules you need.
"""
