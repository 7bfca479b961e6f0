# Two commands do all the set-up on a fresh machine:
#   make demo   build .venv if missing, then run the whole pipeline (dvc repro) on the
#               embedded synthetic dataset
#   make test   build .venv if missing, then run the test suite
PY ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
# Stages call `python`: put the venv first so dvc runs them with its interpreter.
export PATH := $(BIN):$(PATH)

.PHONY: demo test venv clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: venv
	$(BIN)/dvc repro

test: venv
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
