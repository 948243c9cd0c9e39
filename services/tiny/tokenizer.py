"""A tiny byte-level BPE tokenizer in the real Qwen2 shape (shared by every tiny family).

Real Qwen checkpoints ship a 151k byte-level BPE vocabulary; the tiny ones keep the same pre-tokenizer,
the same special strings and the same `Qwen2TokenizerFast` class, with a few hundred learned merges so
that the whole folder stays small. Deterministic: the corpus is fixed and BPE training is not random.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

# The Qwen2 pre-tokenizer split (transformers' qwen2 tokenization module, PRETOKENIZE_REGEX).
QWEN_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)

BASE_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen's ChatML template (text only); families with media parts pass their own.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

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

    kwargs = dict(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=[t for t in specials if t not in BASE_SPECIAL],
        model_max_length=32768,
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
