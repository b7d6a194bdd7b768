# The two setup-to-result commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test setup clean test-lmms test-compat

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

# The layering contract (pyproject.toml, docs/architecture.md) first, then the suite.
test: $(BIN)/.installed
	$(BIN)/lint-imports
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

# The engine's equivalence and invariant tests on the other ends of the supported transformers
# range (docs/compat.md), each release in its own environment; 5.24 (the newest) is `make test`.
# Only what the engine's tests import: the eval extras (datasets, accelerate) need a newer hub.
COMPAT_RELEASES ?= 4.57.6 5.4.0
COMPAT_TESTS := tests/runtime/test_compat.py tests/runtime/test_engine.py tests/runtime/test_properties.py tests/runtime/test_positions.py \
	tests/methods/test_scoring.py tests/test_errors.py tests/runtime/test_generation_modes.py tests/runtime/test_generation_properties.py \
	tests/runtime/test_output_attentions.py tests/runtime/test_custom_masks.py

.venv-tf%/.installed: pyproject.toml
	$(PYTHON) -m venv .venv-tf$*
	.venv-tf$*/bin/pip install --quiet --upgrade pip
	.venv-tf$*/bin/pip install --quiet torch==2.13.0
	.venv-tf$*/bin/pip install --quiet "transformers==$*" "pytest>=8" "hypothesis>=6.100" "pillow>=10" "tqdm>=4.66"
	.venv-tf$*/bin/pip install --quiet --no-deps -e .
	touch $@

test-compat: $(foreach v,$(COMPAT_RELEASES),.venv-tf$(v)/.installed)
	set -e; for v in $(COMPAT_RELEASES); do \
		echo "== transformers $$v"; REROUTE_TEST_FAMILIES=llava,qwen2_5_vl,qwen2_vl \
			.venv-tf$$v/bin/python -m pytest -p no:cacheprovider $(COMPAT_TESTS); \
	done

clean:
	rm -rf $(VENV) $(LMMS_VENV) .venv-tf* outputs .pytest_cache
