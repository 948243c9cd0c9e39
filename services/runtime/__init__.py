"""Shared plumbing of every qwen-bento service, written once, split by layer.

A module's folder says what it may import (tests/unit/test_layers.py holds the rule):

- core/     settings (env), errors (the envelope), logging (JSON + request id), metrics (Prometheus),
            languages (the one table). Imports nothing else of ours.
- codecs/   audio decode/encode, images, subtitles, chunking: bytes and arrays in, bytes and arrays out.
            Imports core only.
- edge/     the HTTP boundary: http (middleware, error handlers), ratelimit, fetch (http/s3 + SSRF guard),
            media (uploads and URLs into decoded inputs), remote (gateway <-> model service calls and the
            stream header protocol). Imports core and codecs.
- serving/  running models: scheduler (admission queue + adaptive micro-batching), lifecycle (background
            loading + state), modelservice (the base of every model service), device/colocation
            (placement), sources (tiny/local/hub weights), streams (one thread per stream feeding asyncio),
            generation (token streams and the text-generation messages), engine_supervisor
            and openai_client (a managed `vllm serve` child). Imports core, codecs and edge.remote (the
            `guarded` wrapper a service's API wears).

Nothing here imports torch at module top, and nothing here imports a model package or the gateway.
"""
