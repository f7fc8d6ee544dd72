"""Metrics scored by a pretrained model, behind a registry that never invents a value.

LCM paper section 3.1.1 and Table 8:

- ``cola``: fluency, the mean probability that a sentence is linguistically acceptable under the
  CoLA classifier of Krishna et al. (2020), ``cointegrated/roberta-large-cola-krishna2020``.
  In that checkpoint label 0 is "acceptable" (the reverse of GLUE's CoLA labels).
- ``seahorse-q4`` / ``seahorse-q5`` (SH-4 attribution, SH-5 main ideas): the mean probability
  of "1" from the SEAHORSE mT5-Large metrics of Clark et al. (2023), fed
  ``"premise: {source} hypothesis: {summary}"``, read at the first decoder step.

The language model for MI (paper section 2.4.1, GPT-2) is :class:`HFCausalLM`.

Models are loaded from local files only (``local_files_only=True``): nothing is downloaded. When
a model (or ``transformers``) is not available, :func:`compute_model_metric` returns
``status="missing"`` with the reason instead of a number. Only unavailability is turned into
"missing"; any other error propagates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch


class ModelUnavailable(RuntimeError):
    """The model behind a metric cannot be loaded here; the message says why."""


def _load_pretrained(loader: Callable[..., Any], name: str, **kwargs: Any) -> Any:
    """``loader(name, local_files_only=True)``, turning "not available" into ModelUnavailable."""
    try:
        return loader(name, local_files_only=True, **kwargs)
    except (OSError, ValueError) as e:  # transformers raises these for missing files/repos
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelUnavailable(
            f"{name!r} is not available locally ({type(e).__name__}: {first}). Nothing is "
            "downloaded: fetch it where there is network access, or pass model=<local dir>."
        ) from e


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise ModelUnavailable(f"transformers is not installed ({e})") from e
    return transformers


@dataclass(frozen=True)
class ModelMetricResult:
    """Outcome of one model-based metric.

    Attributes:
        name: registry name.
        model: model id or path it tried.
        status: "ok" or "missing".
        value: mean score when ok, else None.
        values: per-item scores when ok, else None.
        reason: why it is missing ("" when ok).
    """

    name: str
    model: str
    status: Literal["ok", "missing"]
    value: float | None = None
    values: list[float] | None = None
    reason: str = ""


class ModelMetric(ABC):
    """A metric computed by a pretrained model.

    Args:
        model: Hugging Face id or local directory; default ``default_model``.
        device: where to run it.
        batch_size: items per forward pass.
        max_length: input truncation in tokens.
    """

    name: ClassVar[str]
    default_model: ClassVar[str]
    #: Whether :meth:`score` needs the source documents.
    needs_source: ClassVar[bool] = False

    def __init__(
        self,
        model: str | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        max_length: int = 512,
    ) -> None:
        self.model_name = model or self.default_model
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_length = max_length
        self._loaded = False

    def load(self) -> None:
        """Load the model (raises :class:`ModelUnavailable`)."""
        if not self._loaded:
            self._load()
            self._loaded = True

    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def _score(self, hypotheses: list[str], sources: list[str] | None) -> list[float]: ...

    @torch.inference_mode()
    def score(self, hypotheses: Sequence[str], sources: Sequence[str] | None = None) -> list[float]:
        """Per-item scores in [0, 1]."""
        if self.needs_source and (sources is None or len(sources) != len(hypotheses)):
            raise ValueError(f"{self.name} needs one source per hypothesis")
        self.load()
        return self._score(list(hypotheses), None if sources is None else list(sources))


_REGISTRY: dict[str, type[ModelMetric]] = {}


def register_model_metric(cls: type[ModelMetric]) -> type[ModelMetric]:
    """Class decorator: make ``cls`` available to :func:`compute_model_metric` by ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"model metric {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def model_metric_names() -> list[str]:
    """Registered metric names."""
    return sorted(_REGISTRY)


def get_model_metric(name: str, **kwargs: Any) -> ModelMetric:
    """A new instance of the registered metric ``name`` (its model is loaded lazily).

    Args:
        name: one of :func:`model_metric_names`.
        **kwargs: constructor arguments of the metric (``model``, ``device``, ...).
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown model metric {name!r}; known: {', '.join(model_metric_names())}")
    return _REGISTRY[name](**kwargs)


def compute_model_metric(
    name: str,
    hypotheses: Sequence[str],
    sources: Sequence[str] | None = None,
    **kwargs: Any,
) -> ModelMetricResult:
    """Score with the registered metric ``name``, or report it missing.

    Args:
        name: one of :func:`model_metric_names`.
        hypotheses: texts to score (for ``cola``, pass sentences: the paper averages per
            sentence).
        sources: source documents (SEAHORSE).
        **kwargs: constructor arguments of the metric (``model``, ``device``, ...).
    """
    metric = get_model_metric(name, **kwargs)
    try:
        values = metric.score(hypotheses, sources)
    except ModelUnavailable as e:
        return ModelMetricResult(name, metric.model_name, "missing", reason=str(e))
    value = sum(values) / len(values) if values else None
    return ModelMetricResult(name, metric.model_name, "ok", value, values)


@register_model_metric
class ColaFluency(ModelMetric):
    """CoLA acceptability (paper Table 8 "CoLA", Krishna et al. 2020).

    Args:
        acceptable_label: output index meaning "acceptable" (0 for the default checkpoint).
        **kwargs: see :class:`ModelMetric`.
    """

    name = "cola"
    default_model = "cointegrated/roberta-large-cola-krishna2020"

    def __init__(self, acceptable_label: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.acceptable_label = acceptable_label

    def _load(self) -> None:
        tf = _transformers()
        self.tokenizer = _load_pretrained(tf.AutoTokenizer.from_pretrained, self.model_name)
        model = _load_pretrained(
            tf.AutoModelForSequenceClassification.from_pretrained, self.model_name
        )
        self.model = model.to(self.device).eval()

    def _score(self, hypotheses: list[str], sources: list[str] | None) -> list[float]:
        out: list[float] = []
        for i in range(0, len(hypotheses), self.batch_size):
            enc = self.tokenizer(
                hypotheses[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            probs = self.model(**enc).logits.float().softmax(dim=-1)  # (b, num_labels)
            out.extend(probs[:, self.acceptable_label].tolist())
        return out


class _Seahorse(ModelMetric):
    """A SEAHORSE mT5 metric: P("1") at the first decoder step (Clark et al. 2023)."""

    needs_source = True

    def __init__(self, max_length: int = 2048, **kwargs: Any) -> None:
        super().__init__(max_length=max_length, **kwargs)

    def _load(self) -> None:
        tf = _transformers()
        self.tokenizer = _load_pretrained(tf.AutoTokenizer.from_pretrained, self.model_name)
        model = _load_pretrained(tf.AutoModelForSeq2SeqLM.from_pretrained, self.model_name)
        self.model = model.to(self.device).eval()
        self.one_id = self.tokenizer.convert_tokens_to_ids("1")
        if self.one_id is None or self.one_id == self.tokenizer.unk_token_id:
            raise RuntimeError(f"{self.model_name}: the tokenizer has no '1' token")

    def _score(self, hypotheses: list[str], sources: list[str] | None) -> list[float]:
        assert sources is not None
        out: list[float] = []
        start = self.model.config.decoder_start_token_id
        for i in range(0, len(hypotheses), self.batch_size):
            texts = [
                f"premise: {s} hypothesis: {h}"
                for s, h in zip(
                    sources[i : i + self.batch_size], hypotheses[i : i + self.batch_size]
                )
            ]
            enc = self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            dec = torch.full((len(texts), 1), start, dtype=torch.long, device=self.device)
            logits = self.model(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                decoder_input_ids=dec,
            ).logits[:, 0]  # (b, vocab)
            out.extend(logits.float().softmax(dim=-1)[:, self.one_id].tolist())
        return out


@register_model_metric
class SeahorseAttribution(_Seahorse):
    """SH-4: is all information in the summary attributable to the source (paper Table 8)."""

    name = "seahorse-q4"
    default_model = "google/seahorse-large-q4"


@register_model_metric
class SeahorseMainIdeas(_Seahorse):
    """SH-5: does the summary capture the main ideas of the source (paper Table 8)."""

    name = "seahorse-q5"
    default_model = "google/seahorse-large-q5"


class HFCausalLM:
    """A Hugging Face causal LM as the :class:`eval.metrics.concepts.LogProbScorer` for MI.

    Args:
        model: id or local directory (the paper: GPT-2, ``"gpt2"``).
        device: where to run it.

    Raises:
        ModelUnavailable: the model or ``transformers`` is not available locally.
    """

    def __init__(self, model: str = "gpt2", device: str | torch.device = "cpu") -> None:
        tf = _transformers()
        self.model_name = model
        self.device = torch.device(device)
        self.tokenizer = _load_pretrained(tf.AutoTokenizer.from_pretrained, model)
        self.model = _load_pretrained(tf.AutoModelForCausalLM.from_pretrained, model)
        self.model = self.model.to(self.device).eval()
        self.max_positions = int(getattr(self.model.config, "n_positions", 0) or 1024)

    @torch.inference_mode()
    def log_prob(self, prefix: str, text: str) -> tuple[float, int]:
        """Sum of log p(token) over the tokens of ``text`` after ``prefix``, and their count.

        ``prefix`` and ``text`` are tokenized separately and concatenated, so ``text`` has the
        same tokens whatever the prefix; the prefix is cut from the left to fit the model.
        """
        pre = self.tokenizer(prefix, add_special_tokens=False).input_ids
        txt = self.tokenizer(text, add_special_tokens=False).input_ids
        if not txt:
            return 0.0, 0
        if not pre:
            raise ValueError("log_prob() needs a non-empty prefix to score the first token")
        if len(txt) >= self.max_positions:
            raise ValueError(f"text of {len(txt)} tokens exceeds the LM's {self.max_positions}")
        keep = self.max_positions - len(txt)
        ids = torch.tensor([pre[-keep:] + txt], device=self.device)  # (1, L)
        logp = self.model(ids).logits.float().log_softmax(dim=-1)  # (1, L, V)
        n_pre = ids.shape[1] - len(txt)
        # token j of the input is predicted at position j - 1
        targets = ids[0, n_pre:]  # (len(txt),)
        picked = logp[0, n_pre - 1 : -1].gather(1, targets[:, None])  # (len(txt), 1)
        return float(picked.sum()), len(txt)


def load_causal_lm(model: str = "gpt2", device: str | torch.device = "cpu") -> HFCausalLM:
    """:class:`HFCausalLM` for MI; raises :class:`ModelUnavailable` when it cannot be loaded."""
    return HFCausalLM(model, device)
