"""The OpenAI segment statistics computed from text (services.asr.protocol)."""

from __future__ import annotations

import zlib

from services.asr.protocol import compression_ratio


def test_compression_ratio_is_whispers_bytes_over_zlib_bytes():
    text = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs."
    data = text.encode()
    assert compression_ratio(text) == len(data) / len(zlib.compress(data))
    assert compression_ratio(text) < 2.4  # ordinary speech


def test_a_decoder_loop_compresses_past_the_failure_threshold():
    assert compression_ratio("thank you " * 40) > 2.4
    assert compression_ratio("") == 0.0  # an empty segment: nothing to compress, no division by zero
    assert compression_ratio("日本語のテキスト") > 0  # UTF-8 bytes, not characters
