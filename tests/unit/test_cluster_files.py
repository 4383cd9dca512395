"""Cluster launch files: they parse, run `rollforge run` with keys the config accepts, and keep servers off 0.0.0.0."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from infra.config import load_config, to_dict
from infra.schema import Config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "infra/cluster"
DISTILL = REPO / "configs/wan2.1_t2v_1.3b_distill.yaml"
BASE = REPO / "configs/wan2.1_t2v_1.3b.yaml"
RAYJOB = CLUSTER / "rayjob.yaml"
RAY_CLUSTER = CLUSTER / "ray-cluster.yaml"
SLURM = CLUSTER / "slurm.sbatch"
DOCKERFILE = CLUSTER / "Dockerfile.cuda"
ALL_FILES = (RAYJOB, RAY_CLUSTER, SLURM, DOCKERFILE, DISTILL)
DOCS = REPO / "docs/CLUSTER.md"
STAGES = REPO / "infra/stages.py"


def _overrides(command: str) -> list[str]:
    """The `key.sub=value` arguments of a shell command line (flags and their values left out)."""
    return [t for t in shlex.split(command) if re.fullmatch(r"[a-z_]+(\.[a-z_]+)+=.*", t)]


# ----------------------------------------------------------------------------- the Wan distill config
def test_distill_config_loads_with_the_1_3b_shapes():
    cfg = load_config(Config, DISTILL)
    m = cfg.model
    assert (m.dim, m.num_layers, m.num_heads, m.ffn_dim, m.text_dim, m.text_len) == (1536, 30, 12, 8960, 4096, 512)
    assert (cfg.runtime.device, cfg.runtime.dtype) == ("cuda", "bfloat16")
    assert cfg.stream.context_blocks == 7 and cfg.stream.window_blocks == 5


def test_distill_config_shapes_equal_the_base_wan_config():
    paths = {"model": "weights", "codec": "vae_path", "text": "path"}
    distill, base = to_dict(load_config(Config, DISTILL)), to_dict(load_config(Config, BASE))
    for section in ("model", "video", "codec", "text", "stream"):
        a, b = dict(distill[section]), dict(base[section])
        a.pop(paths.get(section, ""), None)
        b.pop(paths.get(section, ""), None)
        assert a == b, section


def test_distill_config_training_settings():
    cfg = load_config(Config, DISTILL)
    tr = cfg.train
    assert tr.stage == "distill" and tr.zero_stage in (2, 3) and tr.activation_checkpointing
    # Reference Rolling Forcing DMD values (sources cited in the YAML's comments).
    assert (tr.generator.lr, tr.critic.lr) == (1.5e-6, 4.0e-7)
    assert tr.generator.betas == (0.0, 0.999) and tr.critic.betas == (0.0, 0.999)
    assert (tr.ema_decay, tr.ema_start, tr.critic_updates_per_generator) == (0.99, 200, 5)
    assert tr.guidance_scale == 4.0  # reference 3.0 in the cond + g*(cond - uncond) form
    assert cfg.stream.denoising_steps == [1000, 800, 600, 400, 200] and cfg.stream.warp_denoising_steps
    assert cfg.ray.address == "auto"
    assert cfg.tracking.uri.startswith("http://127.0.0.1:")
    assert cfg.data.shards.startswith("/data/") and cfg.data.latents.startswith("/data/")
    assert cfg.model.weights.startswith("/models/Wan2.1-T2V-1.3B") and tr.teacher.startswith("/models/Wan2.1-T2V-1.3B")


# ----------------------------------------------------------------------------- KubeRay
def test_rayjob_runs_the_pipeline():
    job = yaml.safe_load(RAYJOB.read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    entry = spec["entrypoint"]
    assert "rollforge run" in entry
    config = re.search(r"--config\s+(\S+)", entry).group(1)
    assert (REPO / config).resolve() == DISTILL
    assert re.search(r"--run-dir\s+/runs/\S+", entry)
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    workers = spec["rayClusterSpec"]["workerGroupSpecs"]
    limits = workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    claims = {v["persistentVolumeClaim"]["claimName"] for v in workers[0]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    assert {"rollforge-models", "rollforge-data", "rollforge-runs"} <= claims
    # Every override the entrypoint passes is a key the config accepts.
    load_config(Config, DISTILL, _overrides(entry))


def test_rayjob_head_is_cpu_only_and_schedules_nothing():
    head = yaml.safe_load(RAYJOB.read_text())["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert (head["rayStartParams"]["num-gpus"], head["rayStartParams"]["num-cpus"]) == ("0", "0")
    resources = head["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in {**resources.get("requests", {}), **resources.get("limits", {})}


# ----------------------------------------------------------------------------- Ray cluster launcher
def test_ray_cluster_config():
    c = yaml.safe_load(RAY_CLUSTER.read_text())
    head = c["available_node_types"][c["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU", 0) == 0  # no training on the head
    start = " ".join(c["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "--head" in start
    assert c["docker"]["image"]


def test_ray_cluster_config_passes_rays_schema():
    util = pytest.importorskip("ray.autoscaler._private.util")
    util.validate_config(util.fillout_defaults(yaml.safe_load(RAY_CLUSTER.read_text())))


# ----------------------------------------------------------------------------- SLURM
def test_slurm_script_is_valid_bash_and_runs_the_pipeline():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    res = subprocess.run([bash, "-n", str(SLURM)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    text = SLURM.read_text()
    assert text.startswith("#!/bin/bash") and "#SBATCH --nodes=" in text
    assert re.search(r'rollforge run --config "\$CONFIG" --run-dir "\$RUN_DIR" .*ray\.address="?\$HEAD:\$PORT', text)
    assert re.search(r"trap cleanup EXIT", text) and "ray stop" in text
    assert "ray start --head" in text and "--block" in text
    load_config(Config, DISTILL, ["ray.address=10.0.0.1:6379", "run.learners=16"])


def test_slurm_script_passes_the_user_arguments_through_last():
    text = SLURM.read_text()
    run = re.search(r"^rollforge run .*$", text.replace("\\\n", " "), re.M).group(0)  # continuations joined
    assert run.rstrip().endswith('"$@"'), run


# ----------------------------------------------------------------------------- docs vs. code
def test_evaluate_runs_as_a_one_gpu_ray_task_so_one_job_submit_is_enough():
    assert "ray.remote(num_gpus=1)(evaluate)" in STAGES.read_text()
    docs = DOCS.read_text()
    assert "--entrypoint-num-gpus" not in docs
    assert len(re.findall(r"^ray job submit ", docs, re.M)) == 1


# ----------------------------------------------------------------------------- Dockerfile
def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln.strip() else "")
            for ln in joined.splitlines() if ln.strip()]


def test_dockerfile_installs_the_gpu_extra_as_a_non_root_user():
    ins = _instructions(DOCKERFILE.read_text())
    runs = [args for op, args in ins if op == "RUN"]
    gpu = [i for i, r in enumerate(runs) if re.search(r"pip install .*-e '\.\[gpu\]'", r)]
    torch = [i for i, r in enumerate(runs) if re.search(r"pip install --index-url \S+ \S*torch==", r)]
    assert gpu and torch and torch[0] < gpu[0], "CUDA torch from the PyTorch index first, then the package"
    assert "PIP_CONSTRAINT" in DOCKERFILE.read_text()
    users = [args.strip() for op, args in ins if op == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), "the image must not run as root"
    assert ins[0][0] in ("ARG", "FROM") and any(op == "FROM" and "cuda:" in args for op, args in ins)
    env = " ".join(args for op, args in ins if op in ("ENV", "ARG"))
    assert "TORCH_CUDA_ARCH_LIST" in env and "MAX_JOBS" in env
    assert not re.search(r"(?i)(password|secret|token|access_key)\s*=", env), "no credentials in the image"


# ----------------------------------------------------------------------------- 127.0.0.1 by default
COMMENT = {".yaml": "#", ".sbatch": "#", ".cuda": "#"}


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_no_unexplained_bind_to_all_interfaces(path):
    """A server bound to 0.0.0.0 needs its reason in the comment right above it (or on the same line).

    The project rule is 127.0.0.1 by default; the exceptions (a pod's own network, Ray's inter-node
    ports) must say so where they are made. Comment lines themselves may mention the address.
    """
    lines = path.read_text().splitlines()
    mark = COMMENT.get(path.suffix, "#")
    for i, line in enumerate(lines):
        code = line.split(f" {mark} ", 1)[0]
        if "0.0.0.0" not in code or line.lstrip().startswith(mark):
            continue
        block, j = [line[len(code):]], i - 1
        while j >= 0 and lines[j].lstrip().startswith(mark):  # the comment block directly above
            block.append(lines[j])
            j -= 1
        assert "0.0.0.0" in " ".join(block), f"{path.name}:{i + 1}: binds 0.0.0.0 without a comment saying why"
