"""Frozen sentence codecs: text to concept vectors and back (SONAR and the offline default)."""

from encoders.base import SentenceCodec
from encoders.cache import EmbeddingCache
from encoders.langs import SONAR_LANGS, UnknownLanguageError, validate_lang

__all__ = [
    "EmbeddingCache",
    "SONAR_LANGS",
    "SentenceCodec",
    "UnknownLanguageError",
    "validate_lang",
]
