# The two commands of the README. Both create .venv when missing and install torch 2.13.0 first
# (the CPU build; a plain `torch` requirement could pull a multi-GB CUDA build), then the project.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

# DeepSpeed JIT-compiles a CPU op on first use (~60 s): keep it in the checkout so it is paid once.
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
	touch $@
