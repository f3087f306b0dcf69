# The two Quick start commands: `make serve` (the MCP server on the bundled models) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test setup clean

$(BIN)/lanterna: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,onnx]'
	touch $(BIN)/lanterna

setup: $(BIN)/lanterna

serve: setup
	$(BIN)/lanterna serve

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV)
