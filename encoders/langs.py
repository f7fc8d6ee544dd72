"""FLORES-200 language codes and their validation.

SONAR's text encoder and decoder cards (``text_sonar_basic_encoder``/``_decoder``) list 202 codes:
the 200 FLORES-200 languages, two of which come in two scripts. Codes look like ``eng_Latn``:
an ISO 639-3 language and an ISO 15924 script.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

SONAR_LANGS: tuple[str, ...] = (
    "ace_Arab",
    "ace_Latn",
    "acm_Arab",
    "acq_Arab",
    "aeb_Arab",
    "afr_Latn",
    "ajp_Arab",
    "aka_Latn",
    "amh_Ethi",
    "apc_Arab",
    "arb_Arab",
    "ars_Arab",
    "ary_Arab",
    "arz_Arab",
    "asm_Beng",
    "ast_Latn",
    "awa_Deva",
    "ayr_Latn",
    "azb_Arab",
    "azj_Latn",
    "bak_Cyrl",
    "bam_Latn",
    "ban_Latn",
    "bel_Cyrl",
    "bem_Latn",
    "ben_Beng",
    "bho_Deva",
    "bjn_Arab",
    "bjn_Latn",
    "bod_Tibt",
    "bos_Latn",
    "bug_Latn",
    "bul_Cyrl",
    "cat_Latn",
    "ceb_Latn",
    "ces_Latn",
    "cjk_Latn",
    "ckb_Arab",
    "crh_Latn",
    "cym_Latn",
    "dan_Latn",
    "deu_Latn",
    "dik_Latn",
    "dyu_Latn",
    "dzo_Tibt",
    "ell_Grek",
    "eng_Latn",
    "epo_Latn",
    "est_Latn",
    "eus_Latn",
    "ewe_Latn",
    "fao_Latn",
    "pes_Arab",
    "fij_Latn",
    "fin_Latn",
    "fon_Latn",
    "fra_Latn",
    "fur_Latn",
    "fuv_Latn",
    "gla_Latn",
    "gle_Latn",
    "glg_Latn",
    "grn_Latn",
    "guj_Gujr",
    "hat_Latn",
    "hau_Latn",
    "heb_Hebr",
    "hin_Deva",
    "hne_Deva",
    "hrv_Latn",
    "hun_Latn",
    "hye_Armn",
    "ibo_Latn",
    "ilo_Latn",
    "ind_Latn",
    "isl_Latn",
    "ita_Latn",
    "jav_Latn",
    "jpn_Jpan",
    "kab_Latn",
    "kac_Latn",
    "kam_Latn",
    "kan_Knda",
    "kas_Arab",
    "kas_Deva",
    "kat_Geor",
    "knc_Arab",
    "knc_Latn",
    "kaz_Cyrl",
    "kbp_Latn",
    "kea_Latn",
    "khm_Khmr",
    "kik_Latn",
    "kin_Latn",
    "kir_Cyrl",
    "kmb_Latn",
    "kon_Latn",
    "kor_Hang",
    "kmr_Latn",
    "lao_Laoo",
    "lvs_Latn",
    "lij_Latn",
    "lim_Latn",
    "lin_Latn",
    "lit_Latn",
    "lmo_Latn",
    "ltg_Latn",
    "ltz_Latn",
    "lua_Latn",
    "lug_Latn",
    "luo_Latn",
    "lus_Latn",
    "mag_Deva",
    "mai_Deva",
    "mal_Mlym",
    "mar_Deva",
    "min_Latn",
    "mkd_Cyrl",
    "plt_Latn",
    "mlt_Latn",
    "mni_Beng",
    "khk_Cyrl",
    "mos_Latn",
    "mri_Latn",
    "zsm_Latn",
    "mya_Mymr",
    "nld_Latn",
    "nno_Latn",
    "nob_Latn",
    "npi_Deva",
    "nso_Latn",
    "nus_Latn",
    "nya_Latn",
    "oci_Latn",
    "gaz_Latn",
    "ory_Orya",
    "pag_Latn",
    "pan_Guru",
    "pap_Latn",
    "pol_Latn",
    "por_Latn",
    "prs_Arab",
    "pbt_Arab",
    "quy_Latn",
    "ron_Latn",
    "run_Latn",
    "rus_Cyrl",
    "sag_Latn",
    "san_Deva",
    "sat_Beng",
    "scn_Latn",
    "shn_Mymr",
    "sin_Sinh",
    "slk_Latn",
    "slv_Latn",
    "smo_Latn",
    "sna_Latn",
    "snd_Arab",
    "som_Latn",
    "sot_Latn",
    "spa_Latn",
    "als_Latn",
    "srd_Latn",
    "srp_Cyrl",
    "ssw_Latn",
    "sun_Latn",
    "swe_Latn",
    "swh_Latn",
    "szl_Latn",
    "tam_Taml",
    "tat_Cyrl",
    "tel_Telu",
    "tgk_Cyrl",
    "tgl_Latn",
    "tha_Thai",
    "tir_Ethi",
    "taq_Latn",
    "taq_Tfng",
    "tpi_Latn",
    "tsn_Latn",
    "tso_Latn",
    "tuk_Latn",
    "tum_Latn",
    "tur_Latn",
    "twi_Latn",
    "tzm_Tfng",
    "uig_Arab",
    "ukr_Cyrl",
    "umb_Latn",
    "urd_Arab",
    "uzn_Latn",
    "vec_Latn",
    "vie_Latn",
    "war_Latn",
    "wol_Latn",
    "xho_Latn",
    "ydd_Hebr",
    "yor_Latn",
    "yue_Hant",
    "zho_Hans",
    "zho_Hant",
    "zul_Latn",
)


#: Universal Sentence Encoder multilingual v3 (``encoders.multilingual.USECodec``): 16 languages.
USE_LANGS: tuple[str, ...] = (
    "arb_Arab",
    "deu_Latn",
    "eng_Latn",
    "fra_Latn",
    "ita_Latn",
    "jpn_Jpan",
    "kor_Hang",
    "nld_Latn",
    "pol_Latn",
    "por_Latn",
    "rus_Cyrl",
    "spa_Latn",
    "tha_Thai",
    "tur_Latn",
    "zho_Hans",
    "zho_Hant",
)

#: multilingual-e5-small (``encoders.multilingual.E5Codec``): the XLM-R pre-training languages
#: that have a FLORES-200 code.
E5_LANGS: tuple[str, ...] = tuple(
    sorted(
        {
            "afr_Latn", "als_Latn", "amh_Ethi", "arb_Arab", "asm_Beng", "azj_Latn", "bel_Cyrl",
            "ben_Beng", "bos_Latn", "bul_Cyrl", "cat_Latn", "ces_Latn", "cym_Latn", "dan_Latn",
            "deu_Latn", "ell_Grek", "eng_Latn", "epo_Latn", "est_Latn", "eus_Latn", "pes_Arab",
            "fin_Latn", "fra_Latn", "gla_Latn", "gle_Latn", "glg_Latn", "guj_Gujr", "hau_Latn",
            "heb_Hebr", "hin_Deva", "hrv_Latn", "hun_Latn", "hye_Armn", "ind_Latn", "isl_Latn",
            "ita_Latn", "jav_Latn", "jpn_Jpan", "kat_Geor", "kaz_Cyrl", "khm_Khmr", "kan_Knda",
            "kor_Hang", "kmr_Latn", "kir_Cyrl", "lao_Laoo", "lit_Latn", "lvs_Latn", "plt_Latn",
            "mkd_Cyrl", "mal_Mlym", "khk_Cyrl", "mar_Deva", "zsm_Latn", "mya_Mymr", "npi_Deva",
            "nld_Latn", "nob_Latn", "gaz_Latn", "ory_Orya", "pan_Guru", "pol_Latn", "pbt_Arab",
            "por_Latn", "ron_Latn", "rus_Cyrl", "san_Deva", "snd_Arab", "sin_Sinh", "slk_Latn",
            "slv_Latn", "som_Latn", "spa_Latn", "srp_Cyrl", "sun_Latn", "swe_Latn", "swh_Latn",
            "tam_Taml", "tel_Telu", "tha_Thai", "tgl_Latn", "tur_Latn", "uig_Arab", "ukr_Cyrl",
            "urd_Arab", "uzn_Latn", "vie_Latn", "xho_Latn", "ydd_Hebr", "zho_Hans", "zho_Hant",
        }
    )
)  # fmt: skip

#: The languages each codec class handles, by the dotted path ``--codec`` takes; error messages
#: use it to name the codecs that can handle a code the current one cannot.
CODEC_LANGS: dict[str, tuple[str, ...]] = {
    "encoders.sonar.SonarCodec": SONAR_LANGS,
    "encoders.multilingual.USECodec": USE_LANGS,
    "encoders.multilingual.E5Codec": E5_LANGS,
    "encoders.minilm.MiniLMCodec": ("eng_Latn",),
}
_NOTES = {
    "encoders.sonar.SonarCodec": "needs SONAR's downloaded weights",
    "encoders.multilingual.USECodec": "offline",
    "encoders.multilingual.E5Codec": "offline",
}

#: ISO 639-1 (two-letter) codes to their FLORES-200 language part, for suggestions
#: (``fr_Latn`` -> ``fra_Latn``).
_ISO1 = dict(
    x.split(":")
    for x in (
        "af:afr am:amh ar:arb az:azj be:bel bg:bul bn:ben bs:bos ca:cat cs:ces cy:cym da:dan "
        "de:deu el:ell en:eng eo:epo es:spa et:est eu:eus fa:pes fi:fin fr:fra ga:gle gl:glg "
        "gu:guj he:heb hi:hin hr:hrv hu:hun hy:hye id:ind is:isl it:ita ja:jpn jv:jav ka:kat "
        "kk:kaz km:khm kn:kan ko:kor ky:kir lo:lao lt:lit lv:lvs mk:mkd ml:mal mr:mar ms:zsm "
        "my:mya nb:nob ne:npi nl:nld nn:nno no:nob pa:pan pl:pol ps:pbt pt:por ro:ron ru:rus "
        "si:sin sk:slk sl:slv so:som sq:als sr:srp sv:swe sw:swh ta:tam te:tel th:tha tl:tgl "
        "tr:tur uk:ukr ur:urd uz:uzn vi:vie xh:xho yi:ydd zh:zho zu:zul"
    ).split()
)


class UnknownLanguageError(ValueError):
    """A language code the codec does not support, with close matches in the message."""


def suggest_langs(code: str, supported: Iterable[str] = SONAR_LANGS, n: int = 3) -> list[str]:
    """Close matches for a mistyped code, best first.

    Same language first (the ISO 639-3 part, or a two-letter ISO 639-1 code such as ``fr``
    mapped to ``fra``), codes of ``supported`` before other FLORES-200 codes, then by spelling.
    """
    supported = list(supported)
    pool = list(dict.fromkeys(supported + list(SONAR_LANGS)))
    part, _, script = code.partition("_")
    prefix = _ISO1.get(part.lower(), part.lower())
    same_case = [c for c in pool if c.lower() == code.lower()]
    same_language = sorted(
        (c for c in pool if c.split("_")[0] == prefix),
        key=lambda c: (c not in supported, c.split("_")[-1].lower() != script.lower()),
    )
    by_spelling = difflib.get_close_matches(code, supported, n=n, cutoff=0.5)
    by_spelling += difflib.get_close_matches(code, pool, n=n, cutoff=0.5)
    out = list(dict.fromkeys(same_case + same_language + by_spelling))
    return out[:n]


def codecs_for(code: str) -> list[str]:
    """The codec classes (dotted paths) that handle ``code``, with a note on each."""
    return [
        f"{name} ({_NOTES[name]})" if name in _NOTES else name
        for name, langs in CODEC_LANGS.items()
        if code in langs
    ]


def validate_lang(
    code: object, supported: Iterable[str] = SONAR_LANGS, what: str = "", codec: str = ""
) -> str:
    """Return ``code`` if ``supported`` has it, else raise :class:`UnknownLanguageError`.

    A valid FLORES-200 code the codec lacks is reported as unsupported (with the codec's
    languages and the codecs that handle it); anything else as unknown, with close matches.

    Args:
        code: a FLORES-200 code such as ``"fra_Latn"``.
        supported: the codes the codec accepts.
        what: where the code came from (for example ``"docs.jsonl row 7"``), put in the message.
        codec: the codec's name, put in the message.
    """
    supported = tuple(supported)
    if isinstance(code, str) and code in supported:
        return code
    where = f" ({what})" if what else ""
    if not isinstance(code, str) or not code.strip():
        raise UnknownLanguageError(f"missing or empty language code{where}: {code!r}")
    if code in SONAR_LANGS:
        who = codec or "this codec"
        if supported == ("eng_Latn",):
            has = "it reads and writes English only (eng_Latn)"
        elif len(supported) <= 20:
            has = f"it handles {', '.join(supported)}"
        else:
            has = f"it handles {len(supported)} languages, e.g. {', '.join(supported[:5])}"
        others = [c for c in codecs_for(code) if not codec or not c.startswith(codec)]
        can = f"; codecs that handle {code}: {', '.join(others)}" if others else ""
        raise UnknownLanguageError(f"{who} does not support {code}{where}: {has}{can}")
    hint = suggest_langs(code, supported)
    did_you_mean = f"; did you mean {', '.join(hint)}?" if hint else ""
    raise UnknownLanguageError(
        f"unknown language code {code!r}{where}: expected a FLORES-200 code such as "
        f"'eng_Latn' or 'fra_Latn'{did_you_mean}"
    )
