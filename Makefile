# The two quickstart commands are `make run` and `make test`; both install what they need first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SYSTEM_PACKAGES := flite asterisk-core-sounds-en-wav prometheus chromium
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run demo test test-fast test-duplex duplex-env bench bench-duplex lint protos setup system tools clean

## run: start the local stack (STT, LLM, TTS, orchestrator on localhost, CPU) and talk to it once
run: setup
	$(PY) -m voxgrid up --demo --log-dir .cache/logs

## demo: the same, but stop the stack after the demo conversation
demo: setup
	$(PY) -m voxgrid up --demo --exit-after-demo --log-dir .cache/logs

## test: the whole CPU test suite (unit + loopback end-to-end with real small models + chart), then the
## duplex tests in their own venv (moshi pins its own torch)
test: setup tools duplex-env
	$(PY) -m pytest -m "not gpu" -p no:cacheprovider --ignore=tests/duplex
	PYTHONPATH=. $(DUPLEX_VENV)/bin/python -m pytest tests/duplex -m "not gpu" -p no:cacheprovider

## test-fast: unit tests only
test-fast: setup
	$(PY) -m pytest -m "not slow and not gpu and not e2e"

## bench: every benchmark table (CPU)
bench: setup
	$(PY) benchmarks/run_all.py

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

lint: setup
	$(VENV)/bin/ruff check .

## protos: regenerate voxgrid/v1 from protos/
protos: setup
	$(PY) -m voxgrid.protogen

setup: system $(VENV)/.installed

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
	$(PIP) install -q -e '.[cpu,tts-kokoro,loadtest,dev]'
	touch $@

clean:
	rm -rf $(VENV) $(DUPLEX_VENV) .cache
