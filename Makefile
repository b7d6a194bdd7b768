# The two setup-to-result commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test setup clean test-lmms

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch that lies on this disk; pinned before anything can pull a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

setup: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/reroute demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest

# The lmms-eval plugin end to end, in its own environment: lmms-eval without its own dependency
# list (which pulls torchvision, broken beside the CPU torch), plus what its import path needs.
LMMS_VENV ?= .venv-lmms
LMMS_BIN  := $(LMMS_VENV)/bin

$(LMMS_BIN)/.installed: pyproject.toml tests_lmms/requirements.txt
	$(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_BIN)/pip install --quiet --upgrade pip
	$(LMMS_BIN)/pip install --quiet torch==2.13.0
	$(LMMS_BIN)/pip install --quiet -e . -r tests_lmms/requirements.txt
	$(LMMS_BIN)/pip install --quiet --no-deps "lmms-eval>=0.7.3,<0.8"
	touch $@

test-lmms: $(LMMS_BIN)/.installed
	$(LMMS_BIN)/python -m pytest tests_lmms

clean:
	rm -rf $(VENV) $(LMMS_VENV) outputs .pytest_cache
