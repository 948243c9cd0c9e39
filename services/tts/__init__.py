"""Text to speech (Qwen3-TTS CustomVoice): nine built-in voices, whole-clip and streamed synthesis."""
