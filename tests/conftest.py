"""Shared fixtures. Environment first: nothing may reach a hub or write to ~/.cache."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Set before anything imports fairseq2/datasets: both read these once.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="lcm-tests-"))
os.environ.setdefault("FAIRSEQ2_CACHE_DIR", str(_SESSION_DIR / "fairseq2-cache"))
os.environ["FAIRSEQ2_USER_ASSET_DIR"] = str(_SESSION_DIR / "cards")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", str(_SESSION_DIR / "hf"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
(_SESSION_DIR / "cards").mkdir()

import hashlib  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from encoders.base import SentenceCodec  # noqa: E402

WORDS = (
    "the cat dog sat on mat a red blue house runs quickly slowly big small tree river bird "
    "sings today yesterday green sun moon"
).split()


def make_sentence(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(3, 9))).capitalize() + "."


@pytest.fixture
def plain_argv(monkeypatch):
    """``sys.argv`` is ``["lcm"]``: LightningCLI reads it and warns when it holds pytest's args.
    A module that drives the CLI takes it with ``pytestmark = pytest.mark.usefixtures(...)``."""
    monkeypatch.setattr(sys, "argv", ["lcm"])


@pytest.fixture
def one_thread():
    """One torch thread for the test: the same float reductions in the parent and a forked child
    (a parent's OpenMP pool does not survive ``fork()``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """A pretraining folder: the real ``lcm prepare`` on 40 toy documents that follow the token
    chain of tests/helpers_train.py (one per test module)."""
    from helpers_train import make_shards

    return make_shards(tmp_path_factory.mktemp("pre"), 40, seed=0)


@pytest.fixture(scope="module")
def sft_shards(tmp_path_factory) -> Path:
    """A summarization folder: 30 toy documents with a ``summary`` field (one per test module)."""
    from helpers_train import make_shards

    return make_shards(tmp_path_factory.mktemp("sft"), 30, seed=1, summaries=True)


@pytest.fixture(scope="session")
def card_dir() -> Path:
    return _SESSION_DIR / "cards"


@pytest.fixture(scope="session")
def tiny_sonar(card_dir):
    """A tiny random SONAR registered as asset cards ``tiny_sonar_encoder/decoder``."""
    from encoders.tiny_sonar import build_tiny_sonar

    return build_tiny_sonar(card_dir, seed=0)


@pytest.fixture(scope="session")
def tiny_codec(tiny_sonar):
    from encoders.sonar import SonarCodec

    return SonarCodec(
        tiny_sonar.encoder, tiny_sonar.decoder, batch_max_tokens=256, decode_max_len=20
    )


class HashCodec(SentenceCodec):
    """A deterministic test codec: each sentence maps to a fixed pseudo-random unit vector.

    Sentences containing ``"NaN!"`` encode to NaN, to exercise the non-finite reject path.
    """

    def __init__(self, dim: int = 16, langs=("eng_Latn", "fra_Latn", "deu_Latn")) -> None:
        super().__init__()
        self.codec_id = f"hash{dim}"
        self.dim = dim
        self.langs = tuple(langs)
        self.calls = 0

    def _encode(self, sentences, lang):
        self.calls += 1
        out = torch.empty(len(sentences), self.dim)
        for i, s in enumerate(sentences):
            seed = int.from_bytes(hashlib.sha1(f"{lang}|{s}".encode()).digest()[:8], "little")
            g = torch.Generator().manual_seed(seed)
            v = torch.randn(self.dim, generator=g)
            out[i] = v / v.norm()
            if "NaN!" in s:
                out[i] = float("nan")
        return out

    def decode(self, vectors, lang):
        self.validate_lang(lang)
        return [f"<{lang}:{float(v.sum()):.3f}>" for v in vectors]


@pytest.fixture
def hash_codec() -> HashCodec:
    return HashCodec()
