"""Diagram-to-table recognition (Qwen3-VL + LoRA adapters) behind POST /infer."""
