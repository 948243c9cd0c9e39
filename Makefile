# qwen-bento — two commands matter: `make demo` and `make test`. Everything installs from uv.lock.
SHELL := /bin/bash
UV_VERSION ?= 0.13.9
# uv from PATH, else as a Python module (installed from PyPI, pinned, on first use).
UV ?= $(shell command -v uv 2>/dev/null || echo python3 -m uv)
PY := .venv/bin/python
PORT ?= 3000
HOST ?= 127.0.0.1
export BENTOML_CONFIG := $(CURDIR)/configuration.yaml
export BENTOML_DO_NOT_TRACK := true

.PHONY: help uv venv tiny demo serve test test-unit test-served bench bento clean

help:
	@echo "make demo   - serve the whole suite offline on tiny models at http://$(HOST):$(PORT) (one process)"
	@echo "make serve  - serve real models (HF ids or QWEN_<SVC>_MODEL paths), one process per service"
	@echo "make test   - install from uv.lock and run the test suite (unit + served)"
	@echo "make bench  - benchmarks (print ratios measured in one run)"

uv:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet "uv==$(UV_VERSION)"

.venv/.synced: uv.lock pyproject.toml | uv
	$(UV) sync --frozen --extra dev
	@touch $@

venv: .venv/.synced

tiny: venv
	$(PY) -m services.tiny build

# Offline demo: tiny checkpoints, every service in one process (six torch processes on 2 cores cost
# ~4x the start time and memory: FACTS §5). Same service classes and engines as production.
demo: tiny
	QWEN_MODELS=tiny QWEN_TORCH_THREADS=$${QWEN_TORCH_THREADS:-1} \
	  .venv/bin/bentoml serve services.gateway:Gateway --development --host $(HOST) --port $(PORT)

serve: venv
	.venv/bin/bentoml serve services.gateway:Gateway --host $${HOST:-0.0.0.0} --port $(PORT)

test: venv
	$(PY) -m pytest -q

test-unit: venv
	$(PY) -m pytest -q tests/unit

test-served: venv
	$(PY) -m pytest -q -m served

bench: venv
	$(PY) bench/align.py
	$(PY) bench/speech.py

clean:
	rm -rf .venv .pytest_cache

bentos/requirements.txt: uv.lock | uv
	$(UV) export --frozen --no-hashes --no-dev --no-emit-project --format requirements-txt > $@

bento: venv bentos/requirements.txt
	BENTOML_NO_LOCAL_URL=1 .venv/bin/bentoml build .
