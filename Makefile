# rollforge — set up with `make install`, then `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= outputs/demo
# Every pip call (and every package's own build environment) stays on the CPU torch wheel.
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export HF_HUB_OFFLINE := 1
# DeepSpeed compiles a shared-memory comm op once (~60 s); keep it with the venv.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/$(VENV)/torch_extensions

.PHONY: install test demo bench lint clean

install:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@$(VENV)/bin/rollforge --help >/dev/null && echo "installed: $(VENV)/bin/rollforge"

test:
	$(PY) -m pytest

demo:
	$(VENV)/bin/rollforge generate --config configs/tiny.yaml --prompt "a red ball rolling across a blue floor" \
		--seconds 10 --sampler rolling --out $(DEMO_DIR)/rolling.mp4
	$(VENV)/bin/rollforge generate --config configs/tiny.yaml --prompt "a red ball rolling across a blue floor" \
		--seconds 10 --sampler block_ar --out $(DEMO_DIR)/block_ar.mp4
	$(VENV)/bin/rollforge generate --config configs/tiny.yaml --prompt-schedule configs/demo_prompts.yaml \
		--seconds 10 --out $(DEMO_DIR)/prompt_switch.mp4
	$(VENV)/bin/rollforge bench stream --config configs/tiny.yaml --seconds 10
	@echo "demo videos (random weights: the streaming machinery, not a trained model) in $(DEMO_DIR)/"

bench:
	$(PY) bench/stream_cache.py --config configs/tiny.yaml
	$(PY) bench/data_pipeline.py --config configs/tiny.yaml
	$(PY) bench/train_throughput.py

lint:
	$(VENV)/bin/ruff check .

clean:
	rm -rf outputs .pytest_cache .ruff_cache
