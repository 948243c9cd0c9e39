"""Audio captioning (Qwen3-Omni-30B-A3B-Captioner) behind POST /v1/chat/completions."""
