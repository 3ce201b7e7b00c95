# The two commands of the README. Both create .venv when missing and install torch 2.13.0 first
# (the CPU build; a plain `torch` requirement could pull a multi-GB CUDA build), then the project.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

# DeepSpeed JIT-compiles a CPU op on first use: keep it in the checkout, built at install time.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.torch_extensions

.PHONY: demo test

demo: $(INSTALLED)
	$(PY) jobs/scale_sweep.py --config configs/embedded.yaml

test: $(INSTALLED)
	$(PY) -m pytest

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@# Compile DeepSpeed's CPU communication op now (~40 s, once) rather than in the first run.
	DS_ACCELERATOR=cpu $(PY) -c "from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder as B; B().load(verbose=False)"
	touch $@
