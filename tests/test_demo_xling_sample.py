"""lcm.demo_xling's scored documents: a seeded sample by md5, aligned across languages."""

from __future__ import annotations

import pytest

from lcm.demo_xling import scored_documents


def _docs(lang: str, keep) -> list[dict]:
    """Documents in file order (alphabetical by package), md5 shared across languages."""
    return [
        {"id": f"pkg{i:03d}", "md5": f"md5-{i:03d}", "lang": lang, "text": f"{lang} {i}"}
        for i in range(200)
        if keep(i)
    ]


EN = _docs("en", lambda i: True)
EN_BY_MD5 = {r["md5"]: r for r in EN}
FR = _docs("fr", lambda i: i % 2 == 0)  # translates every other English document
DE = _docs("de", lambda i: i % 3 == 0)


def _md5s(docs: list[dict]) -> list[str]:
    return [r["md5"] for r in docs]


def test_the_sample_is_not_the_head_of_the_file():
    test, aligned = scored_documents(EN, EN_BY_MD5, 50)
    assert len(test) == 50 and aligned == EN
    assert _md5s(test) != _md5s(EN[:50])
    # Not the head in any order either: the sample reaches past the first quarter of the file.
    assert set(_md5s(test)) != set(_md5s(EN[:50]))
    assert max(int(m[4:]) for m in _md5s(test)) >= 100


def test_the_sample_is_stable_for_a_seed_and_changes_with_it():
    first = scored_documents(FR, EN_BY_MD5, 30, seed=0)[0]
    assert scored_documents(FR, EN_BY_MD5, 30, seed=0)[0] == first
    assert scored_documents(list(reversed(FR)), EN_BY_MD5, 30, seed=0)[0] == first
    other = scored_documents(FR, EN_BY_MD5, 30, seed=1)[0]
    assert set(_md5s(other)) != set(_md5s(first)) and len(other) == 30


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_the_languages_samples_are_aligned(seed):
    en = set(_md5s(scored_documents(EN, EN_BY_MD5, 60, seed)[0]))
    fr = set(_md5s(scored_documents(FR, EN_BY_MD5, 60, seed)[0]))
    de = set(_md5s(scored_documents(DE, EN_BY_MD5, 60, seed)[0]))
    # Every English document of the English sample is scored in each language that has it ...
    assert en & set(_md5s(FR)) <= fr and en & set(_md5s(DE)) <= de
    # One ranking for all languages: each scores the first 60 of the English ranking it has.
    ranking = _md5s(scored_documents(EN, EN_BY_MD5, len(EN), seed)[0])
    for lang in (FR, DE):
        have = set(_md5s(lang))
        want = [m for m in ranking if m in have][:60]
        assert _md5s(scored_documents(lang, EN_BY_MD5, 60, seed)[0]) == want
    # A language with the same translations as another scores exactly the same documents.
    fr_again = _docs("it", lambda i: i % 2 == 0)
    assert set(_md5s(scored_documents(fr_again, EN_BY_MD5, 60, seed)[0])) == fr
    # Each scored document has the English one it is aligned with.
    assert fr <= set(EN_BY_MD5) and de <= set(EN_BY_MD5)


def test_the_whole_split_when_n_eval_is_large_and_only_aligned_documents():
    stray = {"id": "zzz", "md5": "not-in-english", "lang": "fr", "text": "x"}
    test, aligned = scored_documents([*FR, stray], EN_BY_MD5, 1000)
    assert aligned == FR and sorted(_md5s(test)) == _md5s(FR)
    assert len(scored_documents(FR, EN_BY_MD5, len(FR))[0]) == len(FR)
    assert scored_documents(FR, EN_BY_MD5, 0)[0] == []
    with pytest.raises(ValueError, match="md5"):
        scored_documents([*FR, FR[0]], EN_BY_MD5, 10)  # two documents with one md5
