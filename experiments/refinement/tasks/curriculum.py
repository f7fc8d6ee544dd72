"""A curriculum over task difficulty (COCONUT-style stages, Hao et al. 2024).

The refiner's CPU pilot (DESIGN.md) needed one: trained on every difficulty at once, the MSE
settles on the mean of the plausible answers and never learns the step. Training therefore moves
through stages; stage s trains on the easiest ``start + s`` levels:

    stage 0: levels[:start]          e.g. hops {1}
    stage 1: levels[:start + 1]      hops {1, 2}        (the newest level is 2)
    ...                              until every level is unlocked (the last stage)

A stage ends (the next level is unlocked) when the probe accuracy of its newest level reaches
``threshold`` after at least ``min_steps`` steps in the stage, or unconditionally after
``max_steps`` steps; with ``threshold=None`` the stages follow the step schedule alone. Each
batch draws a share ``newest_share`` of its examples from the newest level and spreads the rest
uniformly over the earlier ones (replay, so the easy levels are not forgotten).

This module is plain Python (no Lightning): :mod:`experiments.refinement.tasks.train` feeds it
probe accuracies from a callback and draws every batch's levels from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class CurriculumConfig:
    """When to unlock harder difficulties, and how batches mix the unlocked ones.

    Args:
        levels: The training difficulties, easiest first.
        start: Levels unlocked at stage 0.
        threshold: Unlock the next level once the probe accuracy of the newest unlocked level
            reaches this value (after ``min_steps``); None = follow ``max_steps`` only.
        min_steps: Steps a stage lasts at least before its threshold is checked.
        max_steps: Steps after which a stage ends whatever its accuracy; None = wait for the
            threshold for ever (needs ``threshold``).
        newest_share: Share of every batch drawn from the newest unlocked level; the rest is
            spread uniformly over the earlier unlocked levels. None = uniform over all unlocked
            levels. Stage 0 with several levels, or a single unlocked level, is always uniform.
    """

    levels: tuple[float, ...] = (1.0, 2.0, 3.0)
    start: int = 1
    threshold: float | None = 0.9
    min_steps: int = 100
    max_steps: int | None = 2000
    newest_share: float | None = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(float(v) for v in self.levels))
        if not self.levels:
            raise ValueError("a curriculum needs at least one level")
        if len(set(self.levels)) != len(self.levels):
            raise ValueError(f"levels must be distinct, got {self.levels}")
        if not 1 <= self.start <= len(self.levels):
            raise ValueError(f"start must be in [1, {len(self.levels)}], got {self.start}")
        if self.threshold is None and self.max_steps is None and self.start < len(self.levels):
            raise ValueError("set threshold or max_steps, or the curriculum never advances")
        if self.min_steps < 0 or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError(f"invalid stage lengths min={self.min_steps} max={self.max_steps}")
        if self.newest_share is not None and not 0.0 < self.newest_share <= 1.0:
            raise ValueError(f"newest_share must be in (0, 1], got {self.newest_share}")

    @property
    def num_stages(self) -> int:
        return len(self.levels) - self.start + 1


class Curriculum:
    """The mutable state of a :class:`CurriculumConfig`: current stage and when it began.

    Args:
        config: The schedule.
    """

    def __init__(self, config: CurriculumConfig) -> None:
        self.config = config
        self.stage = 0
        self.stage_start = 0  # training step at which the current stage began
        self.history: list[dict[str, Any]] = []  # one entry per advance: step, level, accuracy

    # ------------------------------------------------------------------------------- state
    @property
    def unlocked(self) -> tuple[float, ...]:
        """The levels trained on now, easiest first."""
        return self.config.levels[: self.config.start + self.stage]

    @property
    def newest(self) -> float:
        return self.unlocked[-1]

    @property
    def finished(self) -> bool:
        """Every level is unlocked (the last stage)."""
        return self.stage == self.config.num_stages - 1

    def probabilities(self) -> dict[float, float]:
        """{level: probability that an example of a batch has this level}."""
        levels = self.unlocked
        share = self.config.newest_share
        if share is None or len(levels) == 1 or self.stage == 0:
            return {v: 1.0 / len(levels) for v in levels}
        rest = (1.0 - share) / (len(levels) - 1)
        return {v: (share if v == levels[-1] else rest) for v in levels}

    def level_counts(self, n: int, generator: torch.Generator | None = None) -> dict[float, int]:
        """How many of n examples take each unlocked level: a multinomial draw of
        :meth:`probabilities` (levels with no example are left out)."""
        probs = self.probabilities()
        levels = list(probs)
        weights = torch.tensor([probs[v] for v in levels], dtype=torch.float64)
        idx = torch.multinomial(weights, n, replacement=True, generator=generator)
        counts = torch.bincount(idx, minlength=len(levels)).tolist()
        return {v: c for v, c in zip(levels, counts) if c}

    # ------------------------------------------------------------------------------ update
    def update(self, step: int, accuracy: Mapping[float, float] | float | None = None) -> bool:
        """Advance the stage if its rule says so; returns whether it advanced.

        Args:
            step: The current training step (global).
            accuracy: Probe accuracy of the newest level (a float), or {level: accuracy} with
                the newest level in it; None when no probe ran (only ``max_steps`` can fire).
        """
        if self.finished:
            return False
        c = self.config
        in_stage = step - self.stage_start
        acc = accuracy.get(self.newest) if isinstance(accuracy, Mapping) else accuracy
        passed = (
            c.threshold is not None
            and acc is not None
            and in_stage >= c.min_steps
            and acc >= c.threshold
        )
        timed_out = c.max_steps is not None and in_stage >= c.max_steps
        if not (passed or timed_out):
            return False
        self.history.append(
            dict(
                step=step,
                level=self.newest,
                accuracy=None if acc is None else float(acc),
                reason="threshold" if passed else "max_steps",
            )
        )
        self.stage += 1
        self.stage_start = step
        return True

    def state_dict(self) -> dict[str, Any]:
        return dict(
            stage=self.stage,
            stage_start=self.stage_start,
            history=list(self.history),
            config=asdict(self.config),
        )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = CurriculumConfig(**state["config"])
        if saved.levels != self.config.levels:
            raise ValueError(f"checkpoint curriculum levels {saved.levels} != {self.config.levels}")
        self.stage = int(state["stage"])
        self.stage_start = int(state["stage_start"])
        self.history = list(state["history"])

    def __repr__(self) -> str:
        return f"Curriculum(stage={self.stage}, unlocked={self.unlocked})"
