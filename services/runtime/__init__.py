"""Shared plumbing of every qwen-bento service, written once.

settings (env), errors (the envelope), logging (JSON + request id), http (edge middleware, error
handlers), metrics (Prometheus), device (device/dtype), sources (tiny/local/hub weights), lifecycle
(background model loading + state), scheduler (admission queue + adaptive micro-batching), remote
(gateway <-> model service calls), fetch (http/s3 + SSRF guard), audio (decode), tasks (submit/status/
result). Nothing here imports torch at module top.
"""
