"""The languages of the Qwen speech models: one table, and each model's view of it.

A row is one language: the name qwen_asr uses (qwen_tts uses it in lower case), its ISO 639 code, other
spellings clients send, and whether its script puts spaces between words. A view (`ASR`, `ALIGNER`,
`TTS`) is the rows one model supports, in the order it lists them; `parse` turns a code or a name
(any case, `_` or `-`) into the model's name, or raises ValueError listing what the model supports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence


@dataclass(frozen=True)
class Language:
    name: str  # as qwen_asr spells it ("Chinese")
    code: str  # ISO 639-1, or 639-3 where 639-1 has none (yue, fil)
    aliases: tuple[str, ...] = ()  # other accepted spellings, lower case
    spaced: bool = True  # False: words are written without spaces between them


# Qwen3-ASR's 30 languages in the order of its config's `support_languages`; every other model supports
# a subset.
TABLE: tuple[Language, ...] = (
    Language("Chinese", "zh", ("zh-cn", "zh-hans", "zh-tw", "zh-hant", "cmn", "mandarin"), spaced=False),
    Language("English", "en", ("en-us", "en-gb")),
    Language("Cantonese", "yue", ("zh-hk",), spaced=False),
    Language("Arabic", "ar"),
    Language("German", "de"),
    Language("French", "fr"),
    Language("Spanish", "es"),
    Language("Portuguese", "pt", ("pt-br", "pt-pt")),
    Language("Indonesian", "id"),
    Language("Italian", "it"),
    Language("Korean", "ko", ("kr",)),
    Language("Russian", "ru"),
    Language("Thai", "th", spaced=False),
    Language("Vietnamese", "vi"),
    Language("Japanese", "ja", ("jp",), spaced=False),
    Language("Turkish", "tr"),
    Language("Hindi", "hi"),
    Language("Malay", "ms"),
    Language("Dutch", "nl"),
    Language("Swedish", "sv"),
    Language("Danish", "da"),
    Language("Finnish", "fi"),
    Language("Polish", "pl"),
    Language("Czech", "cs"),
    Language("Filipino", "fil", ("tl", "tagalog")),
    Language("Persian", "fa", ("farsi",)),
    Language("Greek", "el"),
    Language("Romanian", "ro"),
    Language("Hungarian", "hu"),
    Language("Macedonian", "mk"),
)
_BY_NAME = {lang.name: lang for lang in TABLE}


def word_separator(name: str) -> str:
    """What joins two pieces of text in this language: "" for scripts without spaces, else " "."""
    lang = _BY_NAME.get(name)
    return " " if lang is None or lang.spaced else ""


class Languages:
    """The languages one model supports, a view of TABLE."""

    def __init__(self, model: str, names: Sequence[str]):
        self.model = model
        self.rows = tuple(_BY_NAME[name] for name in names)
        self._spellings = {spelling: lang.name for lang in self.rows
                           for spelling in (lang.code, lang.name.lower(), *lang.aliases)}

    def __iter__(self) -> Iterator[Language]:
        return iter(self.rows)

    def __contains__(self, name: object) -> bool:
        return any(lang.name == name for lang in self.rows)

    @property
    def names(self) -> list[str]:
        return [lang.name for lang in self.rows]

    @property
    def codes(self) -> list[str]:
        return [lang.code for lang in self.rows]

    def code(self, name: str | None) -> str | None:
        """The ISO code of a language of this model by its name; None for any other."""
        return next((lang.code for lang in self.rows if lang.name == name), None)

    def parse(self, value: str | None) -> str | None:
        """The model's name for an ISO code or a name; None when not given.

        Raises ValueError listing the supported codes and names."""
        if value is None or not str(value).strip():
            return None
        name = self._spellings.get(str(value).strip().lower().replace("_", "-"))
        if name is None:
            raise ValueError(f"unsupported language {value!r}; the {self.model} supports: "
                             + ", ".join(f"{lang.code} ({lang.name})" for lang in self.rows))
        return name


ASR = Languages("ASR", [lang.name for lang in TABLE])
# Qwen3-ForcedAligner's 11 (its config's `support_languages`, here in the order the API documents them).
ALIGNER = Languages("aligner", ["Chinese", "English", "Cantonese", "French", "German", "Italian", "Japanese",
                                "Korean", "Portuguese", "Russian", "Spanish"])
# Qwen3-TTS CustomVoice's 10 (the config's `codec_language_id` less the two dialects, beijing_dialect and
# sichuan_dialect, which qwen_tts hides from requests and reaches only through the voices dylan and eric),
# in the order of the `tts-1-{code}` model names.
TTS = Languages("TTS", ["Chinese", "English", "Japanese", "Korean", "German", "French", "Spanish", "Russian",
                        "Portuguese", "Italian"])
# qwen_tts spells languages in lower case, with "auto" (detect from the text) first.
TTS_LANGUAGES: list[str] = ["auto", *sorted(name.lower() for name in TTS.names)]
# tts-1-{code} / tts-1-hd-{code}: the model names that force the output language.
TTS_MODEL_LANGUAGES: dict[str, str] = {lang.code: lang.name.lower() for lang in TTS}
