"""The main job's score table (lcm.demo._rouge_table): every floor and the ceiling decode through
the model's own bank and codec, so only the query differs."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from encoders.base import SentenceCodec
from encoders.retrieval import RetrievalBank
from lcm.demo import _rouge_table
from lcm.splitting import SentenceSplitter

VECTORS = {  # sentence -> concept: 'alpha' sentences point along e0, 'beta' ones along e1
    "alpha tool": [1.0, 0.0, 0.0],
    "beta library": [0.0, 1.0, 0.0],
    "Alpha things here.": [1.0, 0.0, 0.1],
    "Beta stuff there.": [0.0, 1.0, 0.1],
    "Beta more.": [0.0, 1.0, -0.1],
}


class TableCodec(SentenceCodec):
    codec_id = "test-table-codec"
    dim = 3
    langs = ("eng_Latn",)

    def __init__(self) -> None:
        super().__init__()
        self.bank = RetrievalBank(self.dim)
        synopses = ["alpha tool", "beta library"]
        self.bank.add(synopses, self.encode(synopses, "eng_Latn"), "eng_Latn")

    def _encode(self, sentences: list[str], lang: str) -> torch.Tensor:
        return torch.tensor([VECTORS[s] for s in sentences])

    def decode(self, vectors: torch.Tensor, lang: str) -> list[str]:
        return [found[0] for found in self.bank.search(vectors, lang, k=1)[1]]


def test_floors_and_ceiling_decode_their_own_query_through_the_models_bank():
    test = [{"text": "Alpha things here. Beta stuff there. Beta more.", "summary": "alpha tool"}]
    model = SimpleNamespace(splitter=SentenceSplitter(256))
    scores = _rouge_table(test, ["beta library"], TableCodec(), model)
    assert scores["model"] == 0.0  # no word in common with the reference
    # the mean of (alpha, beta, beta) is nearest 'beta library'; the first sentence 'alpha tool'
    assert scores["nearest synopsis to mean concept"] == 0.0
    assert scores["nearest synopsis to first-sentence concept"] == 100.0
    assert scores["decoder ceiling (reference concept retrieved)"] == 100.0
    # lead-1 'Alpha things here.' vs 'alpha tool': LCS 1, precision 1/3, recall 1/2 -> F1 0.4
    assert scores["lead-1"] == 40.0 and scores["documents"] == 1
