"""General vision-language generation (Qwen2.5-VL) behind POST /generate and /v1/chat/completions."""
