"""Tiny Qwen3-ASR (real: Qwen/Qwen3-ASR-1.7B), built with qwen_asr's own classes.

Only the production loader reads the folder:

    asr = qwen_asr.Qwen3ASRModel.from_pretrained(folder, max_new_tokens=8, dtype=torch.float32, device_map="cpu")
    asr.transcribe(audio=(wav_16k_float32, 16000), language=None or "English", context="")

Same network as the tiny aligner (services/tiny/aligner.py supplies the shared tokenizer, feature
extractor, chat template and thinker sub-config) but with the real vocabulary-wide LM head.

Generation on the tiny model always runs the full `max_new_tokens`:
Qwen3ASRForConditionalGeneration.generate passes `eos_token_id=[151645, 151643]` (the real
`<|im_end|>` / `<|endoftext|>` ids) explicitly, which overrides any generation config, and a 640-row
vocabulary can never emit them. That does not crash: ids past the vocabulary only feed the stopping
check, and since no row ever finishes, the pad id is never written into the sequence. So keep the
loader's `max_new_tokens` small (tests use 8). The thinker's own generation config (built from
thinker_config, not from generation_config.json) gets the tiny pad/eos ids so that transformers
does not fall back to padding with 151645.
"""

from __future__ import annotations

from pathlib import Path

# The shared Qwen3-ASR pieces live in aligner.py: a cached tiny ASR folder is only rebuilt on
# changes there if the cache fingerprint of "asr" also hashes services.tiny.aligner.
from . import aligner as shared
from .common import output_dir
from .tokenizer import single_token_id


def build(out: Path) -> None:
    from qwen_asr.core.transformers_backend import Qwen3ASRConfig
    from qwen_asr.inference.utils import SUPPORTED_LANGUAGES

    out = output_dir(out)
    tok = shared.build_tokenizer(timestamp=False)
    im_end = single_token_id(tok, "<|im_end|>")
    endoftext = single_token_id(tok, "<|endoftext|>")
    config = Qwen3ASRConfig(
        # The default thinker model_type ("qwen3_asr_thinker") has no "forced_aligner" in it, so the
        # thinker builds the vocabulary head the ASR decodes with.
        # Real 1.7B: the LM head is tied to the embeddings.
        # head_dim 32: vLLM's CPU attention (the engine tests' CPU twin) takes head sizes from 32 up only;
        # the aligner (transformers only) keeps 16.
        thinker_config=shared.thinker_config(tok, tie_word_embeddings=True, head_dim=32, pad_token_id=endoftext,
                                             eos_token_id=[im_end, endoftext]),
        # The package's own language list (Qwen3ASRModel.get_supported_languages returns the same
        # constant; transcribe(language=...) validates against it).
        support_languages=list(SUPPORTED_LANGUAGES),
        architectures=list(shared.ARCHITECTURES),
    )
    # Real generation_config.json: greedy, and temperature 1e-6 besides.
    shared.save_model(out, config, thinker_model_type="qwen3_asr",
                      generation=shared.generation_defaults(tok, temperature=0.000001), tokens=len(tok))
    shared.save_processor(out, tok)
