"""Decoupled rollout workers under Ray: student histories for `distill`, teacher ODE pairs for `ode_init`.

    learner (Ray Train worker)                     driver                       Ray actors
    ──────────────────────────                     ──────                       ──────────
    publish(version, weights) ─────────────► RolloutCoordinator ◄── latest() ── StudentRolloutWorker × N
    RayHistorySource.get() ◄── Queue(maxsize=queue_size) ◄──── put (blocks when full) ─┘
                                               RolloutPool: starts the actors, a supervisor thread
                                               replaces dead workers (≤ max_replacements), close()

* The coordinator holds the latest (serial, version, weights ObjectRef) and counters; it puts the
  weights into the object store itself, so they outlive the learner process that published them.
* Workers fetch weights when the serial changed (a restarted learner may republish a lower version),
  draw a prompt from their share of the latent shards, generate a history with
  `training.history.generate_history` and put it into the bounded queue (backpressure).
* The coordinator and the queue are named actors in NAMESPACE, so learners find them by name.
* Test hook: $ROLLFORGE_KILL_ROLLOUT_AFTER=N makes one student worker exit hard once, after its N-th
  history (a marker file in the run dir decides which).

Teacher-rollout workers (`generate_ode_pairs_with_ray`): each loads the frozen teacher and writes its
share of `train.ode_pairs` as a part file; a completion marker follows (training/ode_parts.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import ray
import torch
from ray.util.queue import Empty, Full, Queue

from data.loader import ShardLoader, latent_decoder, latent_urls
from data.prompt_set import PromptLoader, prompt_dir
from data.prompts import PromptDataset
from pipeline.config import latent_hw
from pipeline.generator import DTYPES, resolve_device
from pipeline.networks.checkpoints import load_weights
from pipeline.networks.text_encoders import build_text_encoder
from pipeline.networks.wan_dit import build_dit
from pipeline.schedule import denoising_levels
from pipeline.windows import ContextRule
from training.history import History, generate_history
from training.ode import make_ode_pairs, save_pairs
from training.ode_parts import complete_parts, part_path, write_marker
from training.roles import role_model

from .config import from_dict, to_dict
from .config_paths import absolute_paths
from .distributed import init_ray
from .schema import Config

log = logging.getLogger("rollforge.rollouts")

NAMESPACE = "rollforge"
KILL_ENV = "ROLLFORGE_KILL_ROLLOUT_AFTER"
ACTOR_ENV = ("TORCH_EXTENSIONS_DIR", "HF_HUB_OFFLINE", "HF_HOME", KILL_ENV)
_POLL_S = 1.0  # how often a blocked worker / learner looks up from the queue to check for stop / failure


# ------------------------------------------------------------------------------------------ helpers


def _actor_cfg(cfg: Config) -> dict:
    """The config as a dict with its paths made absolute (actors may run elsewhere)."""
    return to_dict(absolute_paths(cfg))


def _runtime_env() -> dict:
    return {"env_vars": {k: os.environ[k] for k in ACTOR_ENV if k in os.environ}}


def _device_dtype(cfg: Config) -> tuple[torch.device, torch.dtype]:
    """runtime.device (and runtime.dtype) for GPU workers, fp32 on CPU otherwise."""
    if cfg.rollouts.gpus_per_worker > 0:
        device = resolve_device(cfg.runtime.device)
        return device, (DTYPES[cfg.runtime.dtype] if device.type == "cuda" else torch.float32)
    return torch.device("cpu"), torch.float32


def _texts(cfg: Config, index: int, count: int) -> Iterator[torch.Tensor]:
    """Prompt embeddings [1, L, D] from worker `index`'s share of the latent shards (or of the embedded
    prompt set, data.prompts), forever."""
    if cfg.data.prompts:
        directory = prompt_dir(cfg.data.prompts, None)  # the driver embedded it (infra.ray_train)
        world = min(count, len(PromptDataset(directory)))
        for batch in PromptLoader(directory, index % world, world, cfg.data.seed + index // world):
            yield batch["text"][:1]
        return
    urls = latent_urls(cfg.data.latents)
    world = min(count, len(urls))
    loader = ShardLoader(urls, index % world, world, num_workers=0, seed=cfg.data.seed + index // world,
                         shuffle_buffer=cfg.data.shuffle_buffer, decode=latent_decoder(), batch_size=1)
    for batch in loader:
        yield batch["text"][:1]


# ------------------------------------------------------------------------------------------ actors


class RolloutCoordinator:
    """Latest published weights and pool-wide counters (one per pool, named `<pool>-coordinator`)."""

    def __init__(self, queue: Queue):
        self.queue = queue
        self.serial, self.version, self.weights = 0, -1, None  # weights: [ObjectRef] once published
        self.produced, self.worker_s, self.replaced = 0, 0.0, 0
        self.first_publish: float | None = None
        self.failed: str | None = None
        self.stopping = False

    def get_queue(self) -> Queue:
        return self.queue

    def publish(self, version: int, weights: dict) -> int:
        self.weights = [ray.put(weights)]  # owned by this actor: outlives the publishing learner
        self.serial += 1
        self.version = version
        self.first_publish = self.first_publish or time.monotonic()
        return self.serial

    def latest(self, serial: int) -> tuple[bool, int, int, list | None]:
        """(stop, serial, version, [weights ref] if newer than `serial` else None)."""
        newer = self.weights if self.serial != serial else None
        return self.stopping, self.serial, self.version, newer

    def record(self, rollout_s: float) -> None:
        self.produced += 1
        self.worker_s += rollout_s

    def replaced_one(self) -> None:
        self.replaced += 1

    def fail(self, message: str) -> None:
        self.failed = message

    def stop(self) -> None:
        self.stopping = True

    def is_stopping(self) -> bool:
        return self.stopping

    def stats(self) -> dict:
        elapsed = time.monotonic() - self.first_publish if self.first_publish else 0.0
        return {"produced": self.produced, "worker_s": self.worker_s, "replaced": self.replaced,
                "histories_per_s": self.produced / elapsed if elapsed > 0 else 0.0, "failed": self.failed}


class StudentRolloutWorker:
    """A student copy that turns prompts into histories with the latest published weights."""

    def __init__(self, cfg: dict, index: int, count: int, generation: int, coordinator, queue: Queue, run_dir: str):
        self.cfg = from_dict(Config, cfg)
        self.index, self.coord, self.queue, self.run_dir = index, coordinator, queue, Path(run_dir)
        device, dtype = _device_dtype(self.cfg)
        self.model = build_dit(self.cfg.model, device, dtype).eval().requires_grad_(False)
        s = self.cfg.stream
        self.levels = denoising_levels(s.denoising_steps, s.shift, s.num_train_timesteps, s.warp_denoising_steps)
        self.block_shape = (1, s.frames_per_block, self.cfg.codec.latent_channels, *latent_hw(self.cfg.video, self.cfg.codec))
        # The longest history, keeping what a learner needs to cut it to any length it draws.
        self.min_blocks, self.history_blocks = self.cfg.rollouts.history_range(self.cfg.train, s.context_blocks)
        self.rule = ContextRule.from_stream(s)
        self.texts = _texts(self.cfg, index, count)
        # A replacement (generation > 0) draws different noise from the worker it replaces.
        self.noise = torch.Generator(device).manual_seed(self.cfg.train.seed * 1_000_003 + 7919 * index + generation)
        self.serial, self.version, self.produced = 0, None, 0

    def run(self) -> int:
        """Produce histories until the coordinator says stop; returns how many were produced."""
        s = self.cfg.stream
        while True:
            stop, serial, version, weights = ray.get(self.coord.latest.remote(self.serial))
            if stop:
                return self.produced
            if weights is not None:
                self.model.load_state_dict(ray.get(weights[0]))
                self.serial, self.version = serial, version
            if self.version is None:  # nothing published yet
                time.sleep(0.05)
                continue
            history = generate_history(self.model, next(self.texts), self.levels, self.block_shape,
                                       self.history_blocks, self.rule, self.noise,
                                       version=self.version, worker=self.index,
                                       num_train_timesteps=s.num_train_timesteps, min_blocks=self.min_blocks)
            if not self._put(history):
                return self.produced
            self.produced += 1
            self.coord.record.remote(history.rollout_s)
            self._maybe_die()

    def _put(self, history: History) -> bool:
        """Blocking put (backpressure), looking up every _POLL_S for a stop; False when stopped."""
        while True:
            try:
                self.queue.put(history, block=True, timeout=_POLL_S)
                return True
            except Full:
                if ray.get(self.coord.is_stopping.remote()):
                    return False

    def _maybe_die(self) -> None:
        after = os.environ.get(KILL_ENV)
        if after is None or self.produced != int(after):
            return
        try:  # O_EXCL: exactly one worker of the run wins the marker and dies, once
            os.close(os.open(self.run_dir / f".rollout_killed_after_{after}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(1)


class TeacherRolloutWorker:
    """The frozen teacher making ODE pairs (training/ode.py) from worker `index`'s prompts."""

    def __init__(self, cfg: dict, index: int, count: int):
        self.cfg = from_dict(Config, cfg)
        self.index, self.count = index, count
        self.device, dtype = _device_dtype(self.cfg)
        if not self.cfg.train.teacher:
            raise ValueError("train.teacher: ode_init needs the teacher's weights (an export dir or .safetensors)")
        self.teacher = build_dit(role_model(self.cfg, "teacher"), self.device, torch.float32)
        load_weights(self.teacher, self.cfg.train.teacher)
        self.teacher = self.teacher.to(dtype).eval().requires_grad_(False)
        self.dtype = dtype

    def generate(self, count: int, path: str) -> int:
        """Write `count` pairs (with their prompt embeddings) to `path` atomically; returns count."""
        cfg, s = self.cfg, self.cfg.stream
        levels = denoising_levels(s.denoising_steps, s.shift, s.num_train_timesteps, s.warp_denoising_steps)
        uncond = None
        if cfg.train.guidance_scale != 1.0:
            emb = build_text_encoder(cfg.text, self.device).encode([cfg.sampler.negative_prompt])
            uncond = self.teacher.encode_text(emb.to(self.device, self.dtype))
        texts = _texts(cfg, self.index, self.count)
        embs = [next(texts) for _ in range(count)]
        conds = [(self.teacher.encode_text(e.to(self.device, self.dtype)), uncond) for e in embs]
        shape = (s.context_frames, cfg.codec.latent_channels, *latent_hw(cfg.video, cfg.codec))
        gen = torch.Generator(self.device).manual_seed(cfg.train.seed * 7919 + 104_729 + self.index)
        with torch.no_grad():
            pairs = [dict(p, text=e[0].cpu()) for p, e in zip(
                make_ode_pairs(self.teacher, conds, shape, levels, cfg.train.ode_teacher_steps, s.shift,
                               cfg.train.guidance_scale, gen, self.device, self.dtype, s.num_train_timesteps,
                               cfg.sampler.guidance_interval), embs)]
        tmp = Path(path).with_suffix(".tmp")
        save_pairs(pairs, tmp, {"worker": str(self.index)})
        os.replace(tmp, path)
        return count


# ------------------------------------------------------------------------------------------ driver side


class RolloutPool:
    """Student rollout workers + coordinator + queue, supervised from the driver."""

    def __init__(self, cfg: Config, run_dir: str | Path, name: str | None = None):
        self.cfg, self.run_dir = cfg, Path(run_dir).resolve()
        self.name = name or f"rollouts-{uuid.uuid4().hex[:8]}"
        self.workers: dict[int, tuple] = {}  # index -> (actor handle, run() ref)
        self.replaced = 0
        self.error: RuntimeError | None = None
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self.queue = self.coordinator = None

    @property
    def address(self) -> dict:
        """What a learner needs to find this pool (`RayHistorySource(**address)`)."""
        return {"name": self.name, "namespace": NAMESPACE}

    def start(self) -> RolloutPool:
        init_ray(self.cfg.ray)
        ro = self.cfg.rollouts
        self.queue = Queue(maxsize=ro.queue_size,
                           actor_options={"num_cpus": 0, "name": f"{self.name}-queue", "namespace": NAMESPACE})
        self.coordinator = ray.remote(RolloutCoordinator).options(
            num_cpus=0, name=f"{self.name}-coordinator", namespace=NAMESPACE).remote(self.queue)
        self._cfg_dict = _actor_cfg(self.cfg)
        for i in range(ro.workers):
            self.workers[i] = self._spawn(i, 0)
        self._thread = threading.Thread(target=self._supervise, name="rollout-supervisor", daemon=True)
        self._thread.start()
        log.info("rollout pool %s: %d student workers (%.2g CPU, %.2g GPU each), queue %d", self.name, ro.workers,
                 ro.cpus_per_worker, ro.gpus_per_worker, ro.queue_size)
        return self

    def _spawn(self, index: int, generation: int) -> tuple:
        ro = self.cfg.rollouts
        actor = ray.remote(StudentRolloutWorker).options(
            num_cpus=ro.cpus_per_worker, num_gpus=ro.gpus_per_worker, runtime_env=_runtime_env(),
            name=f"{self.name}-student-{index}-{generation}", namespace=NAMESPACE,
        ).remote(self._cfg_dict, index, ro.workers, generation, self.coordinator, self.queue, str(self.run_dir))
        return actor, actor.run.remote()

    def _supervise(self) -> None:
        """Wait on every worker's run(); a worker that died is replaced (counted) until the budget is spent."""
        while not self._closing.is_set():
            refs = {ref: i for i, (_, ref) in self.workers.items()}
            if not refs:
                return
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=_POLL_S)
            for ref in ready:
                index = refs[ref]
                try:
                    ray.get(ref)
                    self.workers.pop(index)  # returned: it was told to stop
                except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                    if self._closing.is_set():
                        return
                    self._replace(index, e)
                    if self.error is not None:
                        return

    def _replace(self, index: int, err: Exception) -> None:
        ro = self.cfg.rollouts
        if self.replaced >= ro.max_replacements:
            self.error = RuntimeError(f"rollout worker {index} died and rollouts.max_replacements={ro.max_replacements} "
                                      f"replacements are spent: giving up ({type(err).__name__}: {err})")
            log.error("%s", self.error)
            self.coordinator.fail.remote(str(self.error))
            self.workers.pop(index)
            return
        self.replaced += 1
        log.warning("rollout worker %d died (%s); starting replacement %d of at most %d", index,
                    type(err).__name__, self.replaced, ro.max_replacements)
        self.coordinator.replaced_one.remote()
        self.workers[index] = self._spawn(index, self.replaced)

    def close(self, timeout_s: float = 10.0) -> None:
        """Tell the workers to stop, wait briefly for them, then kill every actor of the pool."""
        self._closing.set()
        if self.coordinator is None:
            return
        try:
            ray.get(self.coordinator.stop.remote(), timeout=timeout_s)
        except ray.exceptions.RayError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        refs = [ref for _, ref in self.workers.values()]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        for actor, _ in self.workers.values():
            ray.kill(actor)
        ray.kill(self.coordinator)
        self.queue.shutdown(force=True)
        self.workers.clear()
        self.coordinator = None


class RayHistorySource:
    """The learner's `training.history.HistorySource` over a running pool (found by name)."""

    def __init__(self, name: str, namespace: str = NAMESPACE, get_timeout_s: float = 600.0):
        self.coordinator = ray.get_actor(f"{name}-coordinator", namespace=namespace)
        self.queue: Queue = ray.get(self.coordinator.get_queue.remote())
        self.get_timeout_s = get_timeout_s

    def get(self, current_version: int) -> History:
        deadline = time.monotonic() + self.get_timeout_s
        while True:
            try:
                return self.queue.get(block=True, timeout=max(0.0, min(_POLL_S, deadline - time.monotonic())))
            except Empty:
                failed = ray.get(self.coordinator.stats.remote())["failed"]
                if failed:
                    raise RuntimeError(f"the rollout pool failed: {failed}") from None
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no history from the rollout workers within rollouts.get_timeout_s="
                                       f"{self.get_timeout_s:g} s (learner at weights version {current_version}); "
                                       "are the workers alive and did they get the weights?") from None

    def publish(self, version: int, state_dict: dict) -> None:
        ray.get(self.coordinator.publish.remote(version, state_dict))

    def stats(self) -> dict[str, float]:
        s = ray.get(self.coordinator.stats.remote())
        return {"rollout/queue_depth": float(self.queue.qsize()), "rollout/histories_per_s": s["histories_per_s"],
                "rollout/replaced": float(s["replaced"])}


def generate_ode_pairs_with_ray(cfg: Config, run_dir: str | Path) -> list[Path]:
    """`train.ode_pairs` teacher trajectories from `rollouts.workers` TeacherRolloutWorkers, written as
    parts under RUN/ode_pairs plus a completion marker; parts already written are kept (resume)."""
    pairs_dir = Path(run_dir).resolve() / "ode_pairs"
    done = complete_parts(pairs_dir)
    if done is not None:
        return done
    init_ray(cfg.ray)
    ro, total = cfg.rollouts, cfg.train.ode_pairs
    n = min(ro.workers, total)
    shares = {i: total // n + (i < total % n) for i in range(n)}
    paths = {i: part_path(pairs_dir, i, n) for i in range(n)}
    pairs_dir.mkdir(parents=True, exist_ok=True)
    pending = {i for i in range(n) if not paths[i].is_file()}
    cfg_dict, replaced = _actor_cfg(cfg), 0
    while pending:
        actors = {i: ray.remote(TeacherRolloutWorker).options(
            num_cpus=ro.cpus_per_worker, num_gpus=ro.gpus_per_worker, runtime_env=_runtime_env()).remote(cfg_dict, i, n)
            for i in sorted(pending)}
        refs = {actors[i].generate.remote(shares[i], str(paths[i])): i for i in actors}
        for ref, i in refs.items():
            try:
                ray.get(ref)
                pending.discard(i)
            except ray.exceptions.RayActorError as e:
                replaced += 1
                if replaced > ro.max_replacements:
                    raise RuntimeError(f"teacher rollout worker {i} died and rollouts.max_replacements="
                                       f"{ro.max_replacements} replacements are spent") from e
                log.warning("teacher rollout worker %d died (%s); retrying its part", i, type(e).__name__)
        for actor in actors.values():
            ray.kill(actor)
    write_marker(pairs_dir, [paths[i] for i in range(n)], total)
    return [paths[i] for i in range(n)]
