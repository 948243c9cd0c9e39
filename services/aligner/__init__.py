"""Lyrics-to-audio alignment (Qwen3-ForcedAligner): LRC, enhanced LRC, SRT, VTT and JSON."""
