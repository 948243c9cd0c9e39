"""Qwen3-ASR's 30 languages: ISO 639-1 codes and names accepted, the package's names passed on."""

from __future__ import annotations

ISO_TO_NAME = {
    "zh": "Chinese", "en": "English", "yue": "Cantonese", "ar": "Arabic", "de": "German", "fr": "French",
    "es": "Spanish", "pt": "Portuguese", "id": "Indonesian", "it": "Italian", "ko": "Korean", "ru": "Russian",
    "th": "Thai", "vi": "Vietnamese", "ja": "Japanese", "tr": "Turkish", "hi": "Hindi", "ms": "Malay",
    "nl": "Dutch", "sv": "Swedish", "da": "Danish", "fi": "Finnish", "pl": "Polish", "cs": "Czech",
    "fil": "Filipino", "fa": "Persian", "el": "Greek", "ro": "Romanian", "hu": "Hungarian", "mk": "Macedonian",
}
_EXTRA = {"tl": "Filipino", "zh-cn": "Chinese", "zh-tw": "Chinese", "zh-hk": "Cantonese", "pt-br": "Portuguese",
          "en-us": "English", "en-gb": "English", "mandarin": "Chinese", "farsi": "Persian", "tagalog": "Filipino"}
_LOOKUP = {**ISO_TO_NAME, **{n.lower(): n for n in ISO_TO_NAME.values()}, **_EXTRA}
NAME_TO_ISO = {v: k for k, v in ISO_TO_NAME.items()}
# Scripts written without spaces between words: chunk texts are joined without one.
NO_SPACE = {"Chinese", "Cantonese", "Japanese", "Thai"}


def parse_language(value: str | None) -> str | None:
    """The package's language name for an ISO code or a name; None when not given.

    Raises ValueError listing the accepted codes."""
    if value is None or not str(value).strip():
        return None
    name = _LOOKUP.get(str(value).strip().lower().replace("_", "-"))
    if name is None:
        raise ValueError(f"unsupported language {value!r}; supported: {', '.join(sorted(ISO_TO_NAME))}")
    return name
