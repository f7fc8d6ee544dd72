"""The Python API: text in, text out.

    from lcm.api import ConceptModel

    model = ConceptModel.load("runs/two_tower/checkpoints/last.ckpt")
    model.summarize("A long document ...", source_lang="eng_Latn", target_lang="fra_Latn")
    model.continue_text(["First sentence.", "Second sentence."], source_lang="eng_Latn")

A checkpoint knows its concept shards (the data module's ``data_dir``), whose ``manifest.json``
names the codec the model was trained with and the end-of-text sentence; :meth:`ConceptModel.load`
rebuilds that codec unless one is passed. Encoder-only codecs (the offline MiniLM) decode by
retrieval; their sentence bank is filled from the training shards' sentences.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch

from encoders.base import SentenceCodec
from encoders.registry import codec_from_id
from lcm.generation import GenerationOutput, SamplingConfig, document_seed, generate, make_step
from lcm.objectives import ExitRule
from lcm.splitting import SentenceSplitter

Text = str | Sequence[str]


@dataclass
class Settings:
    """Generation settings. ``None`` means "the checkpoint's": the diffusion sampling settings,
    the refiner's exit rule and Quant-LCM's temperature default to what the model was trained
    and validated with (its recipe), so a recipe's ``guidance_scale`` reaches every generation.

    Args:
        max_new_concepts: most sentences generated per document (>= 1).
        eot_threshold: cosine to the end-of-text concept that stops a document.
        repeat_threshold: cosine to the previous concept that stops a document (> 1: never).
        min_new_concepts: stop rules apply only after this many sentences.
        num_inference_steps: diffusion: denoising steps per concept (default: the checkpoint's).
        guidance_scale: diffusion: classifier-free guidance weight, 1 disables it (default: the
            checkpoint's).
        guidance_rescale: diffusion: guidance rescale phi in [0, 1] (default: the checkpoint's).
        init_noise_scale: diffusion: std of the initial noise (default: the checkpoint's).
        solver: diffusion: ``ddim`` or ``dpmsolver++`` (DPM-Solver++(2M), fewer steps for the
            same sample; default: the checkpoint's).
        seed: seeds every random draw (diffusion noise, refiner initial state, code sampling);
            each document draws from its own generator, seeded by this seed and the document,
            so the same seed gives the same output for a document whatever it is batched with.
        use_cache: KV-cache the context across generated concepts.
        compile: run the generation step through ``torch.compile`` (Two-Tower's fast denoiser,
            Base-LCM's forward, One-Tower's denoising step; compiled once per model, seconds to
            minutes; it pays off on GPUs and long runs, not on small CPU jobs).
        num_iterations: refiner: a fixed number of core iterations per concept instead of the
            adaptive exit.
        exit_threshold: refiner: adaptive exit when 1 - cos between successive predictions
            stays below this (default: the checkpoint's).
        exit_patience: refiner: for this many consecutive iterations (default: the
            checkpoint's).
        max_iterations: refiner: cap on iterations per concept (default: the checkpoint's).
        warm_start: refiner: start each concept from the previous concept's final state.
        temperature: Quant-LCM: code sampling temperature, 0 = greedy (default: the
            checkpoint's).
        top_p: Quant-LCM: nucleus mass of code sampling (default: the checkpoint's).
        decoding: Quant-LCM: ``sample`` (draw each level's code at ``temperature``) or
            ``expected`` (add each level's probability-weighted mean code vector at
            ``temperature``, a point prediction; default: the checkpoint's, ``sample``).
        residual_scale: families trained with a residual: factor s > 0 on the learned
            correction, ``base + s * (prediction - base)`` (default: the checkpoint's, 1).
    """

    max_new_concepts: int = 8
    eot_threshold: float = 0.9
    repeat_threshold: float = 0.9
    min_new_concepts: int = 1
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    guidance_rescale: float | None = None
    init_noise_scale: float | None = None
    solver: Literal["ddim", "dpmsolver++"] | None = None
    seed: int = 0
    use_cache: bool = True
    compile: bool = False
    num_iterations: int | None = None
    exit_threshold: float | None = None
    exit_patience: int | None = None
    max_iterations: int | None = None
    warm_start: bool = False
    temperature: float | None = None
    top_p: float | None = None
    decoding: Literal["sample", "expected"] | None = None
    residual_scale: float | None = None

    def __post_init__(self) -> None:
        # (field, lowest allowed, highest allowed, lowest is exclusive)
        bounds = {
            "max_new_concepts": (1, None, False),
            "min_new_concepts": (0, None, False),
            "eot_threshold": (-1.0, None, False),
            "repeat_threshold": (-1.0, None, False),
            "num_inference_steps": (1, None, False),
            "guidance_scale": (0.0, None, False),
            "guidance_rescale": (0.0, 1.0, False),
            "init_noise_scale": (0.0, None, True),
            "seed": (0, None, False),
            "num_iterations": (1, None, False),
            "exit_threshold": (0.0, None, False),
            "exit_patience": (1, None, False),
            "max_iterations": (1, None, False),
            "temperature": (0.0, None, False),
            "top_p": (0.0, 1.0, True),
            "residual_scale": (0.0, None, True),
        }
        for name, (low, high, open_low) in bounds.items():
            value = getattr(self, name)
            if value is None:
                continue
            kind = self.__dataclass_fields__[name].type
            integral = kind.startswith("int") if isinstance(kind, str) else kind is int
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"generation setting {name} must be a number, got {value!r}")
            if integral and not float(value).is_integer():
                raise TypeError(f"generation setting {name} must be an integer, got {value!r}")
            ok = math.isfinite(value) and (value > low if open_low else value >= low)
            ok = ok and (high is None or value <= high)
            if not ok:
                lo = f"> {low}" if open_low else f">= {low}"
                rng = lo if high is None else f"{lo} and <= {high}"
                raise ValueError(f"generation setting {name} must be {rng}, got {value!r}")
        if self.solver not in (None, "ddim", "dpmsolver++"):
            raise ValueError(f"solver must be 'ddim' or 'dpmsolver++', got {self.solver!r}")
        if self.decoding not in (None, "sample", "expected"):
            raise ValueError(f"decoding must be 'sample' or 'expected', got {self.decoding!r}")
        if self.min_new_concepts > self.max_new_concepts:
            raise ValueError(
                f"min_new_concepts ({self.min_new_concepts}) exceeds max_new_concepts "
                f"({self.max_new_concepts})"
            )

    @classmethod
    def from_mapping(cls, values: dict[str, Any], where: str = "settings") -> Settings:
        """Typed settings from a plain mapping (YAML/JSON), every value checked against its
        field's type by jsonargparse; ``where`` names the mapping in error messages."""
        from jsonargparse import ArgumentParser

        if not isinstance(values, dict):
            raise ValueError(f"{where} must be a mapping such as {{max_new_concepts: 4}}")
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            names = ", ".join(repr(k) for k in sorted(unknown))
            raise ValueError(
                f"{where}: unknown generation setting {names}; "
                f"known: {sorted(cls.__dataclass_fields__)}"
            )
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, "s")
        try:
            ns = parser.parse_object({"s": values})
        except Exception as ex:  # jsonargparse's own error type differs between versions
            raise ValueError(f"{where}: {ex}") from None
        return cls(**{k: ns.s[k] for k in cls.__dataclass_fields__})


class ConceptModel:
    """A trained concept model with its codec: summarize or continue text in any language.

    Use :meth:`load`. ``module`` is the Lightning module of any family; ``codec`` encodes the
    source and decodes the generated concepts.
    """

    def __init__(
        self,
        module,
        codec: SentenceCodec,
        end_of_text: str | None = None,
        mode: str = "pretrain",
        max_sentence_chars: int = 256,
    ) -> None:
        dim = int(module.arch.sonar_dim)
        codec_dim = getattr(codec, "dim", None)
        if codec_dim is None and hasattr(codec, "load"):
            codec_dim = codec.load().dim
        if codec_dim != dim:
            raise ValueError(
                f"the checkpoint's concepts are {dim}-d but the codec {codec.codec_id!r} makes "
                f"{codec_dim}-d vectors: load the codec the model was trained with"
            )
        self.module = module.eval()
        self.codec = codec
        self.end_of_text = end_of_text
        self.mode = mode
        self.splitter = SentenceSplitter(max_sentence_chars)

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        codec: SentenceCodec | None = None,
        device: str = "cpu",
        shards: str | Path | None = None,
        allow_codec_mismatch: bool = False,
    ) -> ConceptModel:
        """Load a checkpoint written by ``lcm fit``, from any working directory.

        The checkpoint carries its codec id, end-of-text sentence and sentence-length cap
        (``lcm_data``), so the training shards are needed only to fill a retrieval codec's
        sentence bank.

        Args:
            checkpoint: the ``.ckpt`` file.
            codec: the sentence codec; default: rebuilt from the id the checkpoint records.
            device: where the model runs.
            shards: a prepared folder whose sentences fill a retrieval codec's bank (default:
                the training shards, by the absolute path the checkpoint records).
            allow_codec_mismatch: accept a ``codec`` whose id differs from the checkpoint's
                (its vectors then mean something else to the model: only for experiments).
        """
        from lcm.train.module import load_module, read_checkpoint

        ckpt_meta = read_checkpoint(checkpoint)
        info = data_info(ckpt_meta)
        module = load_module(str(checkpoint), map_location=device).to(device)
        trained_with = info.get("codec")
        if codec is None:
            if not trained_with:
                raise ValueError(
                    f"{checkpoint}: cannot tell which codec it was trained with (the checkpoint "
                    f"records none and no manifest was found at {info.get('data_dir') or '?'}); "
                    "pass codec= or shards="
                )
            codec = codec_from_id(trained_with)
        elif trained_with and codec.codec_id != trained_with and not allow_codec_mismatch:
            raise ValueError(
                f"{checkpoint} was trained with codec {trained_with!r}, not "
                f"{codec.codec_id!r}: its concepts mean nothing to this model. Pass the codec it "
                "was trained with (or codec=None to rebuild it), or allow_codec_mismatch=True"
            )
        model = cls(
            module,
            codec,
            end_of_text=info.get("end_of_text"),
            mode=info.get("mode", "pretrain"),
            max_sentence_chars=info.get("max_sentence_chars", 256),
        )
        if hasattr(codec, "bank"):
            bank_dir = Path(shards) if shards is not None else None
            if bank_dir is None and info.get("data_dir"):
                bank_dir = Path(info["data_dir"])
            if bank_dir is None or not (bank_dir / "shards").is_dir():
                raise FileNotFoundError(
                    f"{codec.codec_id} decodes by retrieval and needs a sentence bank: the "
                    f"training shards ({bank_dir or 'not recorded'}) are not there; pass "
                    "shards=<a prepared folder> (lcm summarize: --shards)"
                )
            # A summarizer should retrieve summary-like sentences: use the target field alone.
            target = info.get("target_field") if model.mode == "summarize" else None
            model.fill_bank(bank_dir, fields=[target] if target else None)
        return model

    def fill_bank(
        self, shard_dir: str | Path, fields: list[str] | None = None, progress: bool = True
    ) -> int:
        """Give the codec's retrieval bank the sentences of the shards' text columns (all, or
        ``fields``): the bank saved beside the shards when it still matches them (memory-mapped),
        else built from them once and saved there (:mod:`lcm.data.bank`). A bank that already
        holds sentences gets the shards' added in memory. Returns the bank's size."""
        from lcm.data import bank as banks

        bank = self.codec.bank
        if len(bank):
            banks.fill(bank, shard_dir, fields, self.end_of_text, progress)
        else:
            self.codec.bank, _ = banks.load_bank(
                shard_dir, self.codec.codec_id, bank.dim, fields, self.end_of_text, progress
            )
        return len(self.codec.bank)

    # ------------------------------------------------------------------------------------------
    def _sentences(self, doc: Text, lang: str, index: int = 0) -> list[str]:
        if isinstance(doc, str):
            if not doc.strip():
                raise ValueError(f"document {index} is empty")
            return self.splitter.split(doc, lang)
        bad = [j for j, x in enumerate(doc) if not isinstance(x, str)]
        if bad:
            raise TypeError(
                f"document {index}: sentence {bad[0]} is {type(doc[bad[0]]).__name__}, not str"
            )
        sents = [x for x in doc if x.strip()]
        if not sents:
            raise ValueError(f"document {index} is empty: no non-empty sentences")
        return sents

    def predict_concepts(
        self,
        docs: Sequence[Text],
        source_lang: str,
        settings: Settings | None = None,
        add_separator: bool | None = None,
        **overrides,
    ) -> GenerationOutput:
        """Generate the next concepts (raw space) after each document; no decoding.

        Returns the concepts of each document, why it stopped, and per-concept facts in
        ``extras`` (the refiner's ``exit_step``, Quant-LCM's ``codes``). Keyword overrides change
        single :class:`Settings` fields.
        """
        s = _with(settings, overrides)
        self.codec.validate_lang(source_lang, "source_lang")
        docs = _documents(docs)
        device = self.module.device
        prompts = []
        sep_raw = self.module.normalizer.denormalize(self.module.separator.detach())
        sep = self.mode == "summarize" if add_separator is None else add_separator
        seeds = []
        eot = None
        if self.end_of_text:
            eot = self.codec.encode([self.end_of_text], source_lang)[0].to(device)
        for i, doc in enumerate(docs):
            sentences = self._sentences(doc, source_lang, i)
            seeds.append(document_seed(s.seed, source_lang, sentences))
            x = self.codec.encode(sentences, source_lang).to(device)
            if sep:
                # Training sources end with the end-of-text concept before the separator
                # (``lcm prepare --end_of_text``): the prompt does too.
                if eot is not None and sentences[-1] != self.end_of_text:
                    x = torch.cat((x, eot[None].to(x)), dim=0)
                x = torch.cat((x, sep_raw[None].to(x)), dim=0)
            prompts.append(x)
        step = make_step(self.module.eval_objective(), **generation_options(s))
        # One generator per document, seeded by the seed and the document itself: its output
        # does not depend on what it is batched with (a resumed `lcm summarize` writes what an
        # uninterrupted run would, whatever --batch_size).
        gens = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
        return generate(
            step,
            prompts,
            self.module.normalizer,
            max_new_concepts=s.max_new_concepts,
            eot=eot,
            eot_threshold=s.eot_threshold,
            repeat_threshold=s.repeat_threshold,
            min_new_concepts=s.min_new_concepts,
            generator=gens,
        )

    def render_sentences(self, out: GenerationOutput, target_lang: str) -> list[list[str]]:
        """Decode every document's concepts into sentences (the stop sentence left out). Two
        different concepts can decode to the same sentence (a retrieval decoder returns its
        nearest bank sentence): the second one is a repetition, so the document is cut there
        and its stop reason says so (``out`` is updated to match the text). ``lcm summarize``
        and ``lcm eval`` both render through this, so they score and write the same text."""
        rendered = []
        for i, concepts in enumerate(out.concepts):
            sents = self.codec.decode(concepts.cpu(), target_lang) if len(concepts) else []
            for j in range(1, len(sents)):
                if sents[j] == sents[j - 1] and sents[j] != self.end_of_text:
                    sents = sents[:j]
                    out.concepts[i] = concepts[:j]
                    for name in out.extras:
                        out.extras[name][i] = out.extras[name][i][:j]
                    out.stop_reasons[i] = "repetition"
                    break
            rendered.append([x for x in sents if x != self.end_of_text])
        return rendered

    def _render(self, out: GenerationOutput, target_lang: str) -> list[str]:
        """:meth:`render_sentences`, each document's sentences joined into one text."""
        return [" ".join(sents) for sents in self.render_sentences(out, target_lang)]

    def summarize(
        self,
        text: Text | Sequence[Text],
        source_lang: str = "eng_Latn",
        target_lang: str | None = None,
        settings: Settings | None = None,
        **overrides,
    ) -> str | list[str]:
        """Summarize one document (a string) or several (a list of strings, or a list of
        pre-split documents, each a list of sentences).

        ``target_lang`` defaults to ``source_lang``; any FLORES-200 code the codec decodes works.
        Keyword overrides change single :class:`Settings` fields, e.g. ``max_new_concepts=3``.
        """
        return self._run(text, source_lang, target_lang, settings, overrides, separator=True)

    def continue_text(
        self,
        text: Text | Sequence[Text],
        source_lang: str = "eng_Latn",
        target_lang: str | None = None,
        settings: Settings | None = None,
        **overrides,
    ) -> str | list[str]:
        """Continue a document with its next sentences (no separator), in ``target_lang``."""
        return self._run(text, source_lang, target_lang, settings, overrides, separator=False)

    def _run(self, text, source_lang, target_lang, settings, overrides, separator: bool):
        self.codec.validate_lang(source_lang, "source_lang")
        target_lang = target_lang or source_lang
        self.codec.validate_lang(target_lang, "target_lang")
        single = isinstance(text, str)
        # predict_concepts checks every document (with its index) and the settings
        out = self.predict_concepts([text] if single else text, source_lang, settings, separator,
                                    **overrides)  # fmt: skip
        texts = self._render(out, target_lang)
        return texts[0] if single else texts


def _documents(docs: object) -> list:
    """The documents of a call as a list, each a string or a list of sentences; a clear error
    (with the document's index) for anything else."""
    if docs is None:
        raise TypeError("no documents: got None (pass a string, or a list of documents)")
    if isinstance(docs, str):
        return [docs]
    if not isinstance(docs, Sequence):
        raise TypeError(
            f"documents must be a string or a list of documents, got {type(docs).__name__}"
        )
    docs = list(docs)
    if not docs:
        raise ValueError("no documents given")
    for i, doc in enumerate(docs):
        if isinstance(doc, str):
            continue
        if doc is None or not isinstance(doc, Sequence):
            raise TypeError(
                f"document {i} is {type(doc).__name__}: expected a string or a list of sentences"
            )
    return docs


def generation_options(s: Settings) -> dict[str, Any]:
    """:func:`lcm.generation.make_step` options from settings; None keeps the checkpoint's.
    The sampling and exit-rule overrides are the settings named as the fields of
    :class:`SamplingConfig` and :class:`~lcm.objectives.ExitRule`."""

    def named_as(config: type) -> dict[str, Any]:
        return {f.name: getattr(s, f.name) for f in fields(config)}

    return dict(
        sampling_overrides=named_as(SamplingConfig),
        use_cache=s.use_cache,
        compile=s.compile,
        num_iterations=s.num_iterations,
        exit_overrides=named_as(ExitRule),
        warm_start=s.warm_start,
        temperature=s.temperature,
        top_p=s.top_p,
        decoding=s.decoding,
        residual_scale=s.residual_scale,
    )


def data_info(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint says about the data it was trained on: ``codec``, ``end_of_text``,
    ``max_sentence_chars``, ``mode``, ``target_field`` and ``data_dir`` (absolute).

    New checkpoints carry it (``lcm_data``); older ones are read from the data module's
    hyperparameters and the shards' manifest where it can still be found.
    """
    info = dict(checkpoint.get("lcm_data") or {})
    if info:
        return info
    hp = checkpoint.get("datamodule_hyper_parameters") or {}
    info = {"mode": hp.get("mode", "pretrain"), "target_field": hp.get("target_field")}
    if hp.get("data_dir"):
        info["data_dir"] = str(Path(hp["data_dir"]).resolve())
        manifest = Path(info["data_dir"]) / "manifest.json"
        if manifest.exists():
            m = json.loads(manifest.read_text())
            info.update(
                codec=m.get("codec"),
                end_of_text=m.get("end_of_text"),
                max_sentence_chars=m.get("max_sentence_chars", 256),
            )
    return info


def _with(settings: Settings | None, overrides: dict) -> Settings:
    from dataclasses import replace

    base = settings or Settings()
    unknown = set(overrides) - set(base.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown generation settings: {', '.join(sorted(unknown))}")
    return replace(base, **overrides)
