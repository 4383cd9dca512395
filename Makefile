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

# Two pytest workers, one test file each at a time: many tests wait on subprocesses (Ray, DeepSpeed
# ranks, a browser), so two keep both cores busy. Session fixtures are built once (tests/conftest.py).
# One thread per process: the workers' and their subprocesses' torch thread pools otherwise
# oversubscribe the cores (9:36 -> 8:00 on 2 cores; docs/BENCHMARKS.md, "CI"). Ray Train's
# controller polls its workers every 2 s by default, which adds ~3 s to each short test run.
test:
	OMP_NUM_THREADS=1 RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.2 $(PY) -m pytest -n 2 --dist loadfile

demo:
	$(VENV)/bin/rollforge run --config configs/demo.yaml --run-dir $(DEMO_DIR)

bench:
	$(PY) bench/stream_cache.py --config configs/tiny.yaml
	$(PY) bench/data_pipeline.py --config configs/tiny.yaml
	$(PY) bench/train_throughput.py
	$(PY) bench/rollout_utilisation.py

lint:
	$(VENV)/bin/ruff check .

clean:
	rm -rf outputs .pytest_cache .ruff_cache
