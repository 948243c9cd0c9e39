"""The voices of Qwen3-TTS CustomVoice, known without loading the model.

The gateway validates requests and lists voices from this table (its languages come from
runtime.core.languages.TTS_LANGUAGES); tests/tiny/test_real_configs.py checks it against the real config.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Voice:
    id: str  # lower-case speaker name, as the model names it ("vivian", "uncle_fu")
    name: str  # display name ("Vivian", "Uncle_Fu")
    language: str  # native language ("chinese"); any supported language can be spoken
    description: str


# The package README's speaker table for Qwen3-TTS-12Hz-{1.7B,0.6B}-CustomVoice. Dylan and Eric carry a
# dialect flag in the model config: with language chinese/auto the model uses the dialect's language id.
VOICES: list[Voice] = [
    Voice("vivian", "Vivian", "chinese", "female, Chinese; bright, slightly edgy young voice"),
    Voice("serena", "Serena", "chinese", "female, Chinese; warm, gentle young voice"),
    Voice("uncle_fu", "Uncle_Fu", "chinese", "male, Chinese; seasoned voice, low and mellow"),
    Voice("dylan", "Dylan", "chinese", "male, Chinese; Beijing dialect, youthful and clear"),
    Voice("eric", "Eric", "chinese", "male, Chinese; Sichuan (Chengdu) dialect, lively, slightly husky"),
    Voice("ryan", "Ryan", "english", "male, English; dynamic, strong rhythmic drive"),
    Voice("aiden", "Aiden", "english", "male, English (American); sunny, clear midrange"),
    Voice("ono_anna", "Ono_Anna", "japanese", "female, Japanese; playful, light and nimble"),
    Voice("sohee", "Sohee", "korean", "female, Korean; warm, rich in emotion"),
]
VOICE_BY_ID: dict[str, Voice] = {v.id: v for v in VOICES}


def voice_of(speaker: str) -> Voice:
    """The table's entry for a speaker the loaded model names, or a plain one for a speaker it lacks."""
    return VOICE_BY_ID.get(speaker) or Voice(speaker, speaker.title(), "auto", "built-in voice")
