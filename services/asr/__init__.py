"""Speech recognition (Qwen3-ASR) behind OpenAI's POST /v1/audio/transcriptions."""
