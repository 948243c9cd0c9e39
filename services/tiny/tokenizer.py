"""A tiny byte-level BPE tokenizer in the real Qwen2 shape (shared by every tiny family).

Real Qwen checkpoints ship a 151k byte-level BPE vocabulary; the tiny ones keep the same pre-tokenizer,
the same special strings and the same `Qwen2TokenizerFast` class, with a few hundred learned merges so
that the whole folder stays small. Deterministic: the corpus is fixed and BPE training is not random.

Also the tokenizer-side pieces the families share: the special-token lists, the ChatML chat template
with media parts (`media_chat_template`), id look-ups and the VL/Omni save layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from .common import write_json

# The Qwen2 pre-tokenizer split (transformers' qwen2 tokenization module, PRETOKENIZE_REGEX).
QWEN_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)

BASE_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# The special tokens Qwen2.5 and Qwen3 vocabularies add after ChatML's, in the real order.
QWEN_SPECIAL = [
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip
# The fill-in-the-middle markers that follow <tool_call></tool_call> (real ids 151659..151664): plain
# added tokens in the real tokenizers ("special": false), so decoding keeps them.
QWEN_FIM = ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
# Qwen2.5's plain added tokens, in the real order.
QWEN25_PLAIN = ["<tool_call>", "</tool_call>", *QWEN_FIM]
# The audio and TTS markers the Qwen3-Omni and Qwen3-TTS vocabularies add next (real ids 151669..151675).
AUDIO_TTS_SPECIAL = [
    "<|audio_start|>", "<|audio_end|>", "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>",
    "<tts_text_bos_single>", "<|audio_pad|>",
]  # fmt: skip
# Qwen3's plain added tokens (decoded, not skipped as special): Qwen2.5's, then the tool-response and
# think tags, in the real order.
QWEN3_PLAIN = [*QWEN25_PLAIN, "<tool_response>", "</tool_response>", "<think>", "</think>"]

# How a content part counts as text: the ChatML and Qwen3-ASR templates test its type, the VL/Omni
# ones (which also accept bare {"image": ...} parts) test for the key.
TEXT_BY_TYPE = "part['type'] == 'text'"
TEXT_BY_KEY = "'text' in part"

_AUDIO_PART = (
    "part['type'] == 'audio' or 'audio' in part or 'audio_url' in part",
    "{{ '<|audio_start|><|audio_pad|><|audio_end|>' }}",
)


def _vision_part(kind: str, cond: str, label: str | None) -> tuple[str, str]:
    body = f"{{{{ '<|vision_start|><|{kind}_pad|><|vision_end|>' }}}}"
    if label is not None:  # optional "Picture N: " / "Video N: " labels (add_vision_id)
        body = (
            f"{{% set counts.{kind} = counts.{kind} + 1 %}}"
            f"{{% if add_vision_id %}}{{{{ '{label} ' ~ counts.{kind} ~ ': ' }}}}{{% endif %}}" + body
        )
    return cond, body


def media_chat_template(
    *,
    default_system: str | None = None,
    audio: bool = False,
    vision: bool = False,
    vision_labels: bool = False,
    text_test: str = TEXT_BY_TYPE,
) -> str:
    """A ChatML Jinja template in the shape of the real Qwen ones (our own Jinja, same rendering).

    default_system: system turn prepended when the conversation does not open with one (Qwen2.5-VL).
    audio: audio parts render as <|audio_start|><|audio_pad|><|audio_end|>. vision: image/video parts
    render as <|vision_start|><|image_pad|/|video_pad|><|vision_end|> (the processor expands each pad
    per merged patch or audio frame). vision_labels: with add_vision_id, "Picture N: " / "Video N: ".
    """
    parts = [_AUDIO_PART] if audio else []
    if vision:
        images = "part['type'] == 'image' or 'image' in part or 'image_url' in part"
        videos = "part['type'] == 'video' or 'video' in part"
        parts.append(_vision_part("image", images, "Picture" if vision_labels else None))
        parts.append(_vision_part("video", videos, "Video" if vision_labels else None))
    parts.append((text_test, "{{ part['text'] }}"))
    branches = "".join(
        f"{{% {'if' if i == 0 else 'elif'} {cond} %}}{body}" for i, (cond, body) in enumerate(parts)
    )
    system = ""
    if default_system is not None:
        system = (
            "{% if loop.first and message['role'] != 'system' %}"
            f"{{{{ '<|im_start|>system\\n{default_system}<|im_end|>\\n' }}}}"
            "{% endif %}"
        )
    return (
        ("{% set counts = namespace(image=0, video=0) %}" if vision_labels else "")
        + "{% for message in messages %}"
        + system
        + "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        + branches
        + "{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


# Qwen's ChatML template (text only); families with media parts build their own.
CHATML_TEMPLATE = media_chat_template()

# Words the models' prompts slice at fixed positions must be single tokens: repeat them so BPE merges
# them fully. The rest gives the tokenizer some coverage of the 11 aligner languages.
_CORE_WORDS = ["system", "user", "assistant", "language", "English", "Chinese", "audio", "image"]
_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world this is a tiny tokenizer for tests",
    "la la la sing along with me tonight",
    "le chat est sur la table et il dort",
    "der schnelle braune fuchs springt",
    "il gatto e sulla tavola",
    "o rato roeu a roupa do rei",
    "el perro come en la casa",
    "привет как дела у тебя",
    "你好世界 我们一起唱歌",
    "こんにちは 世界 うた",
    "안녕하세요 노래",
    "0123456789 , . ! ? ' : ; - ( ) [ ] | # *",
]


def _corpus(extra: Iterable[str]) -> list[str]:
    lines = list(_CORPUS) + list(extra)
    lines += [" ".join(_CORE_WORDS)] * 200
    lines += [f"{w}\n" for w in _CORE_WORDS] * 50
    return lines


def build_qwen_tokenizer(
    out_dir: str | Path | None = None,
    *,
    special_tokens: Sequence[str] = (),
    plain_tokens: Sequence[str] = (),
    vocab_size: int = 600,
    extra_corpus: Iterable[str] = (),
    chat_template: str | None = CHATML_TEMPLATE,
    init_kwargs: dict | None = None,
):
    """Train, wrap and (optionally) save a tiny Qwen2TokenizerFast.

    special_tokens: added as special tokens after the base ChatML ones (audio/vision markers...).
    plain_tokens: added as non-special added tokens (e.g. `<asr_text>`, `<timestamp>` must be decoded,
    not skipped). init_kwargs: extra tokenizer_config entries (e.g. `extra_special_tokens`).
    Returns the tokenizer; ids are stable for identical arguments.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(_corpus(extra_corpus), trainer=trainer)

    specials = list(dict.fromkeys([*BASE_SPECIAL, *special_tokens]))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if plain_tokens:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain_tokens])

    # The real tokenizer_config.json entries (Qwen2.5/Qwen3 repos): the ChatML markers are listed as
    # additional special tokens, <|endoftext|> is the pad token, the context is 131072.
    kwargs = dict(
        tokenizer_object=tok,
        add_bos_token=False,
        add_prefix_space=False,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=[t for t in specials if t != "<|endoftext|>"],
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        errors="replace",
        split_special_tokens=False,
    )
    kwargs.update(init_kwargs or {})
    hf = Qwen2TokenizerFast(**kwargs)
    if chat_template is not None:
        hf.chat_template = chat_template
    if out_dir is not None:
        hf.save_pretrained(str(out_dir))
    return hf


def single_token_id(tokenizer, text: str) -> int:
    """The id of `text`, asserting it is one token (tiny models slice prompts at fixed positions)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise AssertionError(f"{text!r} must be one token, got {ids}")
    return ids[0]


def token_ids(tokenizer, texts: Iterable[str]) -> dict[str, int]:
    """{text: id} for strings that must each be one token."""
    return {t: single_token_id(tokenizer, t) for t in texts}


def role_ids(tokenizer) -> dict[str, int]:
    """The ChatML role names' ids: single tokens in the real vocabulary (e.g. 8948, 872, 77091)."""
    return token_ids(tokenizer, ("system", "user", "assistant"))


def vision_token_config(ids: dict[str, int]) -> dict[str, int]:
    """The config keys naming the image/video placeholder tokens (Qwen2.5-VL, Qwen3-VL, Omni thinker)."""
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def tts_token_config(ids: dict[str, int]) -> dict[str, int]:
    """The config keys naming the ChatML and TTS text markers (Qwen3-Omni, Qwen3-TTS)."""
    return dict(
        im_start_token_id=ids["<|im_start|>"],
        im_end_token_id=ids["<|im_end|>"],
        tts_pad_token_id=ids["<tts_pad>"],
        tts_bos_token_id=ids["<tts_text_bos>"],
        tts_eos_token_id=ids["<tts_text_eod>"],
    )


def build_media_tokenizer(
    out: Path, special_tokens: Sequence[str], plain_tokens: Sequence[str], chat_template: str, **kwargs
):
    """build_qwen_tokenizer(...) saved in the real VL/Omni layout, its role names checked.

    Real layout: the chat template sits inline in tokenizer_config.json and in the processor's
    chat_template.json; transformers 4.57 would otherwise write a chat_template.jinja the real repos lack.
    Returns the tokenizer and {special token: id} for the ChatML and the given special tokens.
    """
    tok = build_qwen_tokenizer(
        special_tokens=special_tokens, plain_tokens=plain_tokens, chat_template=chat_template, **kwargs
    )
    tok.save_pretrained(out, save_jinja_files=False)
    write_json(Path(out) / "chat_template.json", {"chat_template": chat_template})
    role_ids(tok)
    return tok, token_ids(tok, [*BASE_SPECIAL, *special_tokens])
