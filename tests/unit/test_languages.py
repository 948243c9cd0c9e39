"""One language table; the ASR's, the aligner's and the TTS's lists are views of it. (The views against the
real configs' language lists: tests/tiny/test_real_configs.py.)"""

import pytest

from services.runtime.core.languages import ALIGNER, ASR, TABLE, TTS, TTS_LANGUAGES, TTS_MODEL_LANGUAGES, word_separator


def test_every_spelling_names_one_language():
    spellings = [s for lang in TABLE for s in (lang.code, lang.name.lower(), *lang.aliases)]
    assert len(TABLE) == 30 and len(spellings) == len(set(spellings))
    assert all(s == s.lower() for s in spellings)


def test_the_views_are_subsets_of_the_table():
    assert (len(ASR.names), len(ALIGNER.names), len(TTS.names)) == (30, 11, 10)
    assert set(TTS.names) | {"Cantonese"} == set(ALIGNER.names) and set(ALIGNER.names) < set(ASR.names)
    assert [lang.code for lang in ALIGNER] == "zh en yue fr de it ja ko pt ru es".split()  # the documented order


# Spellings each service accepted before the tables were merged (the ASR now also takes the aligner's extra
# spellings: cmn, zh-hans, zh-hant, jp, kr, pt-pt).
ALIGNER_SPELLINGS = {
    "Chinese": "zh zh-cn zh-hans zh-tw zh-hant cmn chinese mandarin", "English": "en en-us en-gb english",
    "Cantonese": "yue zh-hk cantonese", "French": "fr french", "German": "de german", "Italian": "it italian",
    "Japanese": "ja jp japanese", "Korean": "ko kr korean", "Portuguese": "pt pt-br pt-pt portuguese",
    "Russian": "ru russian", "Spanish": "es spanish",
}
ASR_EXTRA = {"tl": "Filipino", "zh-cn": "Chinese", "zh-tw": "Chinese", "zh-hk": "Cantonese", "pt-br": "Portuguese",
             "en-us": "English", "en-gb": "English", "mandarin": "Chinese", "farsi": "Persian", "tagalog": "Filipino",
             "fil": "Filipino", "fa": "Persian", "mk": "Macedonian", "ms": "Malay", "yue": "Cantonese"}


@pytest.mark.parametrize("name", sorted(ALIGNER_SPELLINGS))
def test_the_aligner_accepts_its_spellings_in_any_case(name):
    for spelling in ALIGNER_SPELLINGS[name].split():
        assert ALIGNER.parse(spelling) == ALIGNER.parse(spelling.upper().replace("-", "_")) == name
        assert ASR.parse(spelling) == name


def test_the_asr_accepts_codes_names_and_its_aliases():
    for spelling, name in ASR_EXTRA.items():
        assert ASR.parse(spelling) == ASR.parse(f" {spelling.upper()} ") == name
    for lang in TABLE:
        assert ASR.parse(lang.code) == ASR.parse(lang.name) == lang.name


def test_a_language_outside_the_view_is_refused_with_the_views_list():
    assert ASR.parse("ar") == "Arabic"
    with pytest.raises(ValueError) as e:
        ALIGNER.parse("ar")
    assert str(e.value) == ("unsupported language 'ar'; the aligner supports: zh (Chinese), en (English), "
                            "yue (Cantonese), fr (French), de (German), it (Italian), ja (Japanese), ko (Korean), "
                            "pt (Portuguese), ru (Russian), es (Spanish)")
    assert ALIGNER.parse(None) is None and ALIGNER.parse("  ") is None


def test_codes_by_name_only_inside_the_view():
    """What the ASR hands the aligner: the code of the detected language, or None (the aligner detects)."""
    assert ALIGNER.code("Cantonese") == "yue" and ASR.code("Arabic") == "ar"
    assert ALIGNER.code("Arabic") is None and ALIGNER.code("") is None and ALIGNER.code(None) is None
    assert "Arabic" in ASR and "Arabic" not in ALIGNER and "arabic" not in ASR


def test_tts_lists():
    assert TTS_LANGUAGES == ["auto", "chinese", "english", "french", "german", "italian", "japanese", "korean",
                             "portuguese", "russian", "spanish"]
    assert list(TTS_MODEL_LANGUAGES) == "zh en ja ko de fr es ru pt it".split()
    assert TTS_MODEL_LANGUAGES["ja"] == "japanese" and set(TTS_MODEL_LANGUAGES.values()) == set(TTS_LANGUAGES[1:])


@pytest.mark.parametrize("name, sep", [("Chinese", ""), ("Cantonese", ""), ("Japanese", ""), ("Thai", ""),
                                       ("English", " "), ("Korean", " "), ("", " "), ("Klingon", " ")])
def test_word_separator(name, sep):
    assert word_separator(name) == sep
