# rollforge — set up with `make install`, then `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= outputs/demo
WORLD_TEACHER_DIR ?= outputs/world_teacher
# Every pip call (and every package's own build environment) stays on the CPU torch wheel.
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export HF_HUB_OFFLINE := 1
# DeepSpeed compiles a shared-memory comm op once (~60 s, in `make install`); keep it with the venv.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/$(VENV)/torch_extensions

.PHONY: install test demo world-teacher bench lint clean

install:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@# Compile DeepSpeed's CPU comm op now, not in the first `make demo` (about a minute it would add there).
	@$(PY) -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" 2>&1 | grep -v Warning || true
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

# Retrain the shipped world teacher (models/world_teacher) on 2 cores, about 2 h 20 min
# (models/world_teacher/README.md): v4 on the two-size "laptop_big" world (configs/world_teacher.yaml's
# schedule, 4,000 steps, then a re-warm resumed from its last checkpoint, lr 1e-4, cosine back to 2e-5 by
# step 5,500), its EMA exported, then v5: v4 fine-tuned 1,200 steps on the config's one-size "laptop_one"
# world (lr 1e-4, cosine to 2e-5, EMA 0.998 from the start), whose EMA is exported in float16.
WT_V4 := run.demo.world_vocab=laptop_big
WT_V5 := run.teacher.max_steps=1200 run.teacher.generator.lr=1.0e-4 run.teacher.generator.decay_start=100 \
	run.teacher.generator.decay_steps=1100 run.teacher.generator.min_lr_ratio=0.2 train.ema_start=0 \
	train.ema_decay=0.998 train.checkpoint_every=300
world-teacher:
	$(VENV)/bin/rollforge run --config configs/world_teacher.yaml --run-dir $(WORLD_TEACHER_DIR) $(WT_V4)
	$(VENV)/bin/rollforge train --config $(WORLD_TEACHER_DIR)/teacher/config.resolved.yaml --stage teacher \
	    --resume --run-dir $(WORLD_TEACHER_DIR)/teacher --max-steps 5500 train.generator.lr=1.0e-4 \
	    train.generator.decay_start=4000 train.generator.decay_steps=1500 train.generator.min_lr_ratio=0.2
	$(VENV)/bin/rollforge export --run-dir $(WORLD_TEACHER_DIR)/teacher --out $(WORLD_TEACHER_DIR)/v4 --ema
	$(VENV)/bin/rollforge run --config configs/world_teacher.yaml --run-dir $(WORLD_TEACHER_DIR)/v5 \
	    model.weights=$(WORLD_TEACHER_DIR)/v4 $(WT_V5)
	$(VENV)/bin/rollforge export --run-dir $(WORLD_TEACHER_DIR)/v5/teacher --out models/world_teacher --ema --dtype float16

bench:
	$(PY) bench/stream_cache.py --config configs/tiny.yaml
	$(PY) bench/data_pipeline.py --config configs/tiny.yaml
	$(PY) bench/train_throughput.py
	$(PY) bench/rollout_utilisation.py

lint:
	$(VENV)/bin/ruff check .

clean:
	rm -rf outputs .pytest_cache .ruff_cache
