"""Language-mean centering (encoders.centering.LanguageCentered): exact per-language shifts."""

from __future__ import annotations

import pytest
import torch

from encoders.centering import LanguageCentered
from encoders.hashing import HashCodec


class TwoLangCodec(HashCodec):
    codec_id = "hash-2lang"
    langs = ("eng_Latn", "fra_Latn")


EN = ["The cat sat.", "A library for XML.", "Rain tomorrow."]
FR = ["Le chat était assis.", "Une bibliothèque XML.", "Pluie demain."]


def test_fit_takes_each_languages_mean_and_encode_subtracts_it_exactly():
    inner = TwoLangCodec()
    c = LanguageCentered.fit(inner, {"eng_Latn": EN, "fra_Latn": FR})
    mu_en, mu_fr = inner.encode(EN, "eng_Latn").mean(0), inner.encode(FR, "fra_Latn").mean(0)
    torch.testing.assert_close(c.means["fra_Latn"], mu_fr)
    torch.testing.assert_close(c.encode(FR, "fra_Latn"), inner.encode(FR, "fra_Latn") - mu_fr)
    torch.testing.assert_close(c.encode(EN, "eng_Latn"), inner.encode(EN, "eng_Latn") - mu_en)
    # Centred: each language's sentences now average to zero.
    torch.testing.assert_close(c.encode(FR, "fra_Latn").mean(0), torch.zeros(16))
    assert c.codec_id == "hash-2lang+langmean"


def test_anchor_keeps_its_language_unchanged_and_shifts_the_others_into_its_frame():
    inner = TwoLangCodec()
    means = {"eng_Latn": torch.full((16,), 0.5), "fra_Latn": torch.full((16,), -1.0)}
    c = LanguageCentered(inner, means, anchor="eng_Latn")
    assert c.codec_id == inner.codec_id  # a model trained on raw English reads it
    torch.testing.assert_close(c.encode(EN, "eng_Latn"), inner.encode(EN, "eng_Latn"))
    torch.testing.assert_close(c.encode(FR, "fra_Latn"), inner.encode(FR, "fra_Latn") + 1.5)
    torch.testing.assert_close(c.shift("fra_Latn"), torch.full((16,), -1.5))


def test_decode_undoes_the_centering_of_each_language():
    inner = TwoLangCodec()
    c = LanguageCentered(
        inner, {"eng_Latn": torch.full((16,), 3.0), "fra_Latn": torch.full((16,), -3.0)}
    )
    # A concept encoded in French decodes back to itself in French: the shift is undone exactly.
    assert c.decode(c.encode(FR, "fra_Latn"), "fra_Latn") == FR
    # Decoding adds the target language's mean before the wrapped decoder sees the vector.
    seen = []
    inner.decode = lambda v, lang: seen.append((v.clone(), lang)) or []
    v = torch.zeros(2, 16)
    c.decode(v, "eng_Latn")
    torch.testing.assert_close(seen[0][0], torch.full((2, 16), 3.0))
    assert seen[0][1] == "eng_Latn"


def test_bad_means_and_unknown_languages_are_clear_errors():
    inner = TwoLangCodec()
    with pytest.raises(ValueError, match="'fra_Latn' has shape"):
        LanguageCentered(inner, {"fra_Latn": torch.zeros(3)})
    with pytest.raises(ValueError, match="NaN"):
        LanguageCentered(inner, {"fra_Latn": torch.full((16,), float("nan"))})
    with pytest.raises(ValueError, match="anchor 'eng_Latn' has no mean"):
        LanguageCentered(inner, {"fra_Latn": torch.zeros(16)}, anchor="eng_Latn")
    c = LanguageCentered(inner, {"fra_Latn": torch.zeros(16)})
    with pytest.raises(ValueError, match="no centering mean for language 'eng_Latn'"):
        c.encode(EN, "eng_Latn")
    with pytest.raises(ValueError, match="no sentences .* 'eng_Latn'"):
        LanguageCentered.fit(inner, {"eng_Latn": []})


def _bank_codec():
    from encoders.hashing import hash_vector
    from encoders.multilingual import MultilingualCodec

    class BankCodec(MultilingualCodec):
        codec_id = "hash-bank"
        dim = 16
        langs = ("eng_Latn", "fra_Latn")

        def _embed(self, sentences):
            return torch.stack([hash_vector(s, self.dim) for s in sentences]).numpy()

    return BankCodec()


def test_centred_bank_decodes_by_cosine_between_centred_query_and_centred_bank():
    inner = _bank_codec()
    inner.add_to_bank(FR, "fra_Latn")
    means = {"eng_Latn": torch.full((16,), 0.3), "fra_Latn": inner.encode(FR, "fra_Latn")[0]}
    c = LanguageCentered(inner, means, anchor="eng_Latn", center_bank=True)
    # A bank sentence's own concept finds itself: the centring of query and bank cancel.
    assert c.decode(c.encode(FR[1:], "fra_Latn"), "fra_Latn") == FR[1:]
    # Any query: the bank sentence with the largest cosine, both sides centred.
    q = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    table = inner.encode(FR, "fra_Latn") - means["fra_Latn"]
    qc = q - means["eng_Latn"]
    cos = (qc / qc.norm(dim=1, keepdim=True)) @ (
        table / table.norm(dim=1, keepdim=True).clamp_min(1e-12)
    ).T
    assert c.decode(q, "fra_Latn") == [FR[int(j)] for j in cos.argmax(dim=1)]
    # The centred table follows the bank when it changes.
    inner.bank.remove([FR[2]], "fra_Latn")
    assert FR[2] not in c.decode(q, "fra_Latn")
    with pytest.raises(ValueError, match="no sentences in 'eng_Latn'"):
        c.decode(q, "eng_Latn")
    with pytest.raises(ValueError, match="needs a retrieval codec"):
        LanguageCentered(TwoLangCodec(), means, center_bank=True)
