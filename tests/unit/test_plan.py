"""`rollforge plan` (infra/plan.py): closed-form parameters equal the meta-device models, the ZeRO
accounting is DeepSpeed's, the CLI's JSON, advice when it does not fit, and the activation estimate
against the memory autograd really holds in tiny CPU forwards + backwards (within 25 %)."""

import json
from pathlib import Path

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from infra import plan as P
from infra.cli import main
from infra.config import load_config
from infra.schema import Config
from pipeline.config import ModelConfig
from pipeline.networks.wan_dit import build_dit
from pipeline.schedule import denoising_levels
from pipeline.windows import ContextRule
from training.roles import check_roles
from training.rollouts import rolling_rollout

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs/tiny.yaml"
DISTILL = ROOT / "configs/wan2.1_t2v_1.3b_distill.yaml"
TEACHER_14B = ["teacher_model.dim=5120", "teacher_model.ffn_dim=13824", "teacher_model.num_heads=40",
               "teacher_model.num_layers=40"]


@pytest.fixture(scope="module")
def paper():
    """The paper's trio: a 1.3B student and critic, a frozen Wan2.1-T2V-14B teacher."""
    return load_config(Config, DISTILL, TEACHER_14B)


# ----------------------------------------------------------------------------------------- parameters
def _meta_counts(m: ModelConfig) -> tuple[int, int]:
    model = build_dit(m, "meta")
    largest = max(sum(p.numel() for p in mod.parameters(recurse=False)) for mod in model.modules())
    return sum(p.numel() for p in model.parameters()), largest


def test_param_count_equals_meta_models(paper):
    roles = check_roles(paper)
    assert P.param_count(roles["student"]) == P.param_count(roles["critic"]) == 1_418_996_800
    assert P.param_count(roles["teacher"]) == 14_288_491_584
    tiny = load_config(Config, TINY, []).model
    odd = ModelConfig(dim=96, ffn_dim=200, num_heads=4, num_layers=3, qk_norm=False, cross_attn_norm=False,
                      patch_size=(1, 4, 2))
    for m in (tiny, odd, roles["student"], roles["teacher"]):
        assert (P.param_count(m), P.largest_layer_params(m)) == _meta_counts(m)


# ----------------------------------------------------------------------------------------- ZeRO
@pytest.mark.parametrize("offload", [False, True])
def test_zero_stages_monotone_and_deepspeed_estimates(offload):
    p, big = 1_418_996_800, 14_164_992
    for world in (1, 2, 8, 64):
        per_stage = [sum(P.trainable_state(p, big, z, world, offload).values()) for z in range(4)]
        # ZeRO-3 at one GPU keeps a gathered layer on top of everything: monotone from 2 ranks on
        if world > 1:
            assert per_stage[3] <= per_stage[2] <= per_stage[1] <= per_stage[0], (world, per_stage)
        for z in (2, 3):
            assert sum(P.trainable_state(p, big, z, world, offload).values()) == pytest.approx(
                P.deepspeed_estimate(p, big, z, world, offload), abs=4)


def test_plan_total_monotone_in_zero_stage(paper):
    totals = []
    for z in (0, 1, 2, 3):
        cfg = P.with_changes(paper, {"train.zero_stage": z})
        totals.append(P.plan(cfg, 8, 80e9, with_advice=False)["total"])
    assert totals[3] <= totals[2] <= totals[1] <= totals[0]


def test_teacher_shard_halves_the_teacher_at_two_gpus(paper):
    teacher = check_roles(paper)["teacher"]
    full = P.frozen_state(teacher, 2, shard=False, dtype_bytes=2)
    half = P.frozen_state(teacher, 2, shard=True, dtype_bytes=2)
    assert full == 2 * 14_288_491_584
    assert half == full // 2 + 2 * P.block_params(teacher)  # half + one gathered block
    assert half < 0.55 * full
    on = P.plan(P.with_changes(paper, {"train.teacher_shard": True}), 2, 80e9, with_advice=False)
    off = P.plan(paper, 2, 80e9, with_advice=False)
    assert on["roles"]["teacher"]["param_bytes"] == half and off["roles"]["teacher"]["param_bytes"] == full


def test_ema_is_sharded_under_every_stage(paper):
    for z in (0, 1, 2, 3):
        r = P.plan(P.with_changes(paper, {"train.zero_stage": z}), 8, 80e9, with_advice=False)
        assert r["roles"]["student"]["ema_bytes"] == 4 * -(-1_418_996_800 // 8)


# ----------------------------------------------------------------------------------------- CLI
def test_cli_json(capsys):
    assert main(["plan", "--config", str(TINY), "--gpus", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gpus"] == 2 and out["gpu_mem"] == 80e9 and out["fits"] is True and "advice" not in out
    assert set(out["roles"]) == {"student", "critic", "teacher"}
    tiny = load_config(Config, TINY, []).model
    for role in ("student", "critic", "teacher"):
        r = out["roles"][role]
        assert r["params"] == P.param_count(tiny)
        assert all(isinstance(r[k], int) and r[k] >= 0 for k in r if k.endswith("_bytes"))
    for k in ("grad_bytes", "optimizer_bytes", "activation_bytes"):
        assert k in out["roles"]["student"] and k in out["roles"]["critic"]
    assert {"ema_bytes", "kv_cache_bytes"} <= set(out["roles"]["student"])
    static = sum(r["static_bytes"] for r in out["roles"].values())
    assert out["total"] == static + max(out["roles"]["student"]["activation_bytes"]
                                        + out["roles"]["student"]["kv_cache_bytes"],
                                        out["roles"]["critic"]["activation_bytes"])


def test_cli_gpus_default_is_run_learners(capsys):
    main(["plan", "--config", str(TINY), "--json", "run.learners=3"])
    assert json.loads(capsys.readouterr().out)["gpus"] == 3


def test_does_not_fit_gives_advice_that_fits(capsys, paper):
    # The paper trio on 8 GPUs of 50 GB at ZeRO-2 with a replicated 14B teacher (28.6 GB) does not fit.
    argv = ["plan", "--config", str(DISTILL), "--gpus", "8", "--gpu-mem", "50", "--json", *TEACHER_14B]
    assert main(argv) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is False and out["total"] > 50e9
    assert {"train.teacher_shard": True} in [a["set"] for a in out["advice"]]
    for a in out["advice"]:
        assert a["total"] <= 50e9
        assert P.plan(P.with_changes(paper, a["set"]), 8, 50e9, with_advice=False)["fits"]
    # the table form says the same
    assert main(argv[:-len(TEACHER_14B) - 1] + TEACHER_14B) == 1
    text = capsys.readouterr().out
    assert "does not fit" in text and "train.teacher_shard=true" in text


def test_paper_trio_fits_on_64_gpus_fully_sharded(paper):
    cfg = P.with_changes(paper, {"train.zero_stage": 3, "train.teacher_shard": True})
    r = P.plan(cfg, 64, 80e9)
    assert r["fits"] and r["settings"]["activation_checkpointing"] and r["settings"]["batch_size"] == 1
    assert r["roles"]["teacher"]["sharded"]


# ----------------------------------------------------------------------------------------- activations
class LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages made inside the mode (forward and backward ops) that are
    still alive, polled after every op; storages of `ignore` (parameters, inputs) are not counted."""

    def __init__(self, ignore=()):
        super().__init__()
        self.live, self.cur, self.peak = {}, 0, 0
        self.ignore = {t.untyped_storage().data_ptr() for t in ignore}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = st.data_ptr()
                if key and key not in self.ignore and (key not in self.live or self.live[key][0].expired()):
                    if key in self.live:
                        self.cur -= self.live[key][1]
                    self.live[key] = (StorageWeakRef(st), st.nbytes())
                    self.cur += st.nbytes()
        self.peak = max(self.peak, self.cur)
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.cur -= self.live.pop(key)[1]
        return out


def _drop_grads(model):
    """Parameter gradients are the plan's `grad_bytes` (ZeRO buckets them), not activations."""
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))


WINDOWS = [  # (model, batch, query frames, context frames, latent h x w)
    (ModelConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2), 1, 12, 3, (8, 8)),
    (ModelConfig(dim=96, ffn_dim=256, num_heads=4, num_layers=3), 2, 9, 6, (8, 8)),
    (ModelConfig(dim=128, ffn_dim=384, num_heads=4, num_layers=2, in_dim=16, out_dim=16, text_dim=64, text_len=16),
     1, 6, 6, (16, 24)),
]


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("case", range(len(WINDOWS)))
def test_window_activation_estimate_within_25_percent(case, checkpointing):
    """One gradient window as the DMD generator step runs it: the student's text conditioning with
    gradient, a forward over query frames attending to a KV context, backward."""
    m, b, frames, ctx_frames, (h, w) = WINDOWS[case]
    torch.manual_seed(0)
    model = build_dit(m, seed=0, zero_head=False)
    model.gradient_checkpointing = checkpointing
    _drop_grads(model)
    tpf = (h // m.patch_size[1]) * (w // m.patch_size[2])
    x = torch.randn(b, frames, m.in_dim, h, w)
    emb = torch.randn(b, m.text_len, m.text_dim)
    ks = torch.randn(m.num_layers, b, ctx_frames * tpf, m.num_heads, m.head_dim)
    vs = torch.randn_like(ks)
    with LiveBytes([*model.parameters(), x, emb, ks, vs]) as live:
        text = model.encode_text(emb)
        out = model(x, torch.full((b, frames), 500.0), text, kv_context=(ks, vs))
        out.float().square().mean().backward()
    est = P.graph_bytes(m, b, [P.Forward(frames * tpf, ctx_frames * tpf)], 4, checkpointing, attention_copy=True)
    assert est == pytest.approx(live.peak, rel=0.25), (est, live.peak)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_rollout_activation_estimate_within_25_percent(checkpointing):
    """A whole Rolling Forcing rollout with its gradient windows recorded (training/rollouts.py) and
    the loss backpropagated: the graphs of every recorded window + the KV cache."""
    cfg = load_config(Config, TINY, [])
    m, s = cfg.model, cfg.stream
    model = build_dit(m, seed=0, zero_head=False)
    model.gradient_checkpointing = checkpointing
    _drop_grads(model)
    levels = denoising_levels(s.denoising_steps, s.shift, s.num_train_timesteps, s.warp_denoising_steps)
    block = (1, s.frames_per_block, cfg.codec.latent_channels, 8, 8)
    emb = torch.randn(1, m.text_len, m.text_dim)
    blocks, offset = s.context_blocks + 2, 3
    with LiveBytes([*model.parameters(), emb]) as live:
        text = model.encode_text(emb)
        x0, _ = rolling_rollout(model, text, levels, block, blocks, s.context_blocks, offset,
                                ContextRule.from_stream(s), torch.Generator().manual_seed(0))
        x0.float().square().mean().backward()
    forwards = P.rolling_forwards(cfg, blocks, offset)
    assert len(forwards) == 2  # a rollout keeps the graphs of more than one window
    est = P.graph_bytes(m, 1, forwards, 4, checkpointing, attention_copy=True) + P.kv_cache_bytes(cfg)
    assert est == pytest.approx(live.peak, rel=0.25), (est, live.peak)
