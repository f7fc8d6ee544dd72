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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from encoders.base import SentenceCodec
from lcm.generation import GenerationOutput, SamplingConfig, generate, make_step
from lcm.objectives import RefinerObjective
from lcm.splitting import SentenceSplitter

Text = str | Sequence[str]


@dataclass
class Settings:
    """Generation settings (the paper's defaults where it gives them).

    Args:
        max_new_concepts: most sentences generated per document.
        eot_threshold: cosine to the end-of-text concept that stops a document.
        repeat_threshold: cosine to the previous concept that stops a document.
        min_new_concepts: stop rules apply only after this many sentences.
        steps: diffusion denoising steps per concept.
        guidance_scale: classifier-free guidance weight (1 disables it).
        guidance_rescale: guidance rescale phi.
        init_noise_scale: std of the initial noise.
        seed: seeds every random draw (diffusion noise, refiner initial state, code sampling);
            the same seed gives the same output.
        use_cache: KV-cache the context across generated concepts.
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
    """

    max_new_concepts: int = 8
    eot_threshold: float = 0.9
    repeat_threshold: float = 0.9
    min_new_concepts: int = 1
    steps: int = 40
    guidance_scale: float = 3.0
    guidance_rescale: float = 0.7
    init_noise_scale: float = 0.6
    seed: int = 0
    use_cache: bool = True
    num_iterations: int | None = None
    exit_threshold: float | None = None
    exit_patience: int | None = None
    max_iterations: int | None = None
    warm_start: bool = False
    temperature: float | None = None
    top_p: float | None = None


def codec_from_id(codec_id: str, **kwargs) -> SentenceCodec:
    """Rebuild the codec named in a shard manifest (``minilm:...`` or ``sonar:<card>:...``)."""
    if codec_id.startswith("minilm:"):
        from encoders.minilm import MiniLMCodec

        return MiniLMCodec(**kwargs)
    if codec_id.startswith("sonar:"):
        from encoders.sonar import SonarCodec

        card = codec_id.split(":")[1]
        decoder = card.replace("encoder", "decoder")
        return SonarCodec(encoder=card, decoder=decoder, **kwargs)
    raise ValueError(f"cannot rebuild codec {codec_id!r}; pass codec= explicitly")


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
        dim = int(module.hparams.sonar_dim)
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
    ) -> ConceptModel:
        """Load a checkpoint written by ``lcm fit``.

        Args:
            checkpoint: the ``.ckpt`` file.
            codec: the sentence codec; default: the one named in the training shards' manifest.
            device: where the model runs.
            shards: the training shards folder (default: the one recorded in the checkpoint);
                its manifest names the codec, and its sentences fill a retrieval bank.
        """
        from lcm.train.module import load_module, read_checkpoint

        module = load_module(str(checkpoint), map_location=device).to(device)
        data_hp = read_checkpoint(checkpoint).get("datamodule_hyper_parameters") or {}
        shard_dir = Path(shards or data_hp.get("data_dir") or "")
        manifest = {}
        if shard_dir and (shard_dir / "manifest.json").exists():
            manifest = json.loads((shard_dir / "manifest.json").read_text())
        if codec is None:
            if "codec" not in manifest:
                raise ValueError(
                    f"{checkpoint}: cannot tell which codec it was trained with (no manifest at "
                    f"{shard_dir or '?'}); pass codec= or shards="
                )
            codec = codec_from_id(manifest["codec"])
        model = cls(
            module,
            codec,
            end_of_text=manifest.get("end_of_text"),
            mode=data_hp.get("mode", "pretrain"),
            max_sentence_chars=manifest.get("max_sentence_chars", 256),
        )
        if hasattr(codec, "bank") and shard_dir.is_dir():
            # A summarizer should retrieve summary-like sentences: use the target field alone.
            target = data_hp.get("target_field") if model.mode == "summarize" else None
            model.fill_bank(shard_dir, fields=[target] if target else None)
        return model

    def fill_bank(self, shard_dir: str | Path, fields: list[str] | None = None) -> int:
        """Add the sentences of the shards' text columns (all, or ``fields``) to the codec's
        retrieval bank; returns how many were offered."""
        import pyarrow.parquet as pq

        n = 0
        for path in sorted(Path(shard_dir, "shards").glob("*.parquet")):
            table = pq.read_table(path)
            langs = table.column("lang").to_pylist()
            for name in table.column_names:
                if not name.endswith("_sentences"):
                    continue
                if fields is not None and name[: -len("_sentences")] not in fields:
                    continue
                emb_name = name[: -len("_sentences")] + "_embeddings"
                sents = table.column(name).to_pylist()
                vecs = table.column(emb_name).to_pylist()
                for lang, s, v in zip(langs, sents, vecs):
                    keep = [i for i, x in enumerate(s) if x != self.end_of_text]
                    if keep:
                        self.codec.bank.add(
                            [s[i] for i in keep], torch.tensor([v[i] for i in keep]), lang
                        )
                        n += len(keep)
        return n

    # ------------------------------------------------------------------------------------------
    def _sentences(self, doc: Text, lang: str) -> list[str]:
        if isinstance(doc, str):
            if not doc.strip():
                raise ValueError("empty document")
            return self.splitter.split(doc, lang)
        sents = [s for s in doc if isinstance(s, str) and s.strip()]
        if not sents:
            raise ValueError("empty document: no non-empty sentences")
        return list(sents)

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
        device = self.module.device
        prompts = []
        sep_raw = self.module.normalizer.denormalize(self.module.separator.detach())
        sep = self.mode == "summarize" if add_separator is None else add_separator
        for doc in docs:
            x = self.codec.encode(self._sentences(doc, source_lang), source_lang).to(device)
            if sep:
                x = torch.cat((x, sep_raw[None].to(x)), dim=0)
            prompts.append(x)
        eot = None
        if self.end_of_text:
            eot = self.codec.encode([self.end_of_text], source_lang)[0].to(device)
        objective = self.module.eval_objective()
        sampling = SamplingConfig(
            num_inference_steps=s.steps,
            guidance_scale=s.guidance_scale,
            guidance_rescale=s.guidance_rescale,
            init_noise_scale=s.init_noise_scale,
        )
        rule = None
        if isinstance(objective, RefinerObjective):
            rule = objective.exit_rule_with(s.exit_threshold, s.exit_patience, s.max_iterations)
        step = make_step(
            objective,
            sampling=sampling,
            use_cache=s.use_cache,
            num_iterations=s.num_iterations,
            exit_rule=rule,
            warm_start=s.warm_start,
            temperature=s.temperature,
            top_p=s.top_p,
        )
        gen = torch.Generator(device=device).manual_seed(s.seed)
        return generate(
            step,
            prompts,
            self.module.normalizer,
            max_new_concepts=s.max_new_concepts,
            eot=eot,
            eot_threshold=s.eot_threshold,
            repeat_threshold=s.repeat_threshold,
            min_new_concepts=s.min_new_concepts,
            generator=gen,
        )

    def _render(self, out: GenerationOutput, target_lang: str) -> list[str]:
        texts = []
        for concepts in out.concepts:
            sents = self.codec.decode(concepts.cpu(), target_lang) if len(concepts) else []
            texts.append(" ".join(x for x in sents if x != self.end_of_text))
        return texts

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
        target_lang = target_lang or source_lang
        self.codec.validate_lang(target_lang, "target_lang")
        single = isinstance(text, str)
        docs = [text] if single else list(text)
        if not docs:
            raise ValueError("no documents given")
        out = self.predict_concepts(docs, source_lang, _with(settings, overrides), separator)
        texts = self._render(out, target_lang)
        return texts[0] if single else texts


def _with(settings: Settings | None, overrides: dict) -> Settings:
    from dataclasses import replace

    base = settings or Settings()
    unknown = set(overrides) - set(base.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown generation settings: {', '.join(sorted(unknown))}")
    return replace(base, **overrides)
