import json
from pathlib import Path

import pytest
import torch

from infra.config import load_config
from infra.schema import Config
from pipeline.config import ModelConfig
from pipeline.networks.checkpoints import load_weights, read_state_dict, save_weights
from pipeline.networks.wan_dit import build_dit
from pipeline.streaming import block_causal_mask
REPO = Path(__file__).resolve().parents[2]


def _shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def test_1p3b_config_on_meta_matches_wan_layout_exactly(wan_layout):
    cfg = load_config(Config, REPO / "configs/wan2.1_t2v_1.3b.yaml")
    model = build_dit(cfg.model, device="meta")
    ref = wan_layout["t2v_1.3b"]
    assert _shapes(model) == ref["keys"]
    assert sum(p.numel() for p in model.parameters()) == ref["n_params"] == 1_418_996_800


def test_14b_shape_matches_wan_layout(wan_layout):
    cfg = ModelConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16, out_dim=16,
                      text_dim=4096, text_len=512)
    model = build_dit(cfg, device="meta")
    assert _shapes(model) == wan_layout["t2v_14b"]["keys"]
    assert sum(p.numel() for p in model.parameters()) == wan_layout["t2v_14b"]["n_params"]


def _inputs(cfg, frames=3, b=1):
    x = torch.randn(b, frames, cfg.in_dim, 4, 4)
    text = torch.randn(b, 5, cfg.text_dim)
    return x, text


def test_safetensors_round_trip_in_wan_layout(tmp_path, micro_cfg):
    a = build_dit(micro_cfg, seed=1, zero_head=False).eval()
    b = build_dit(micro_cfg, seed=2, zero_head=False).eval()
    path = save_weights(a, tmp_path / "model.safetensors")
    load_weights(b, tmp_path)  # directory form, as an export / Wan release folder
    x, text = _inputs(micro_cfg)
    t = torch.tensor([500.0])
    with torch.no_grad():
        assert torch.equal(a(x, t, a.encode_text(text)), b(x, t, b.encode_text(text)))
    assert set(read_state_dict(path)) == set(a.state_dict())


def test_sharded_index_and_pth_load(tmp_path, micro_cfg):
    from safetensors.torch import save_file

    a = build_dit(micro_cfg, seed=1)
    sd = {k: v.contiguous() for k, v in a.state_dict().items()}
    keys = sorted(sd)
    half = len(keys) // 2
    save_file({k: sd[k] for k in keys[:half]}, str(tmp_path / "s1.safetensors"))
    save_file({k: sd[k] for k in keys[half:]}, str(tmp_path / "s2.safetensors"))
    weight_map = {k: ("s1.safetensors" if i < half else "s2.safetensors") for i, k in enumerate(keys)}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    b = build_dit(micro_cfg, seed=3)
    load_weights(b, tmp_path)
    assert all(torch.equal(b.state_dict()[k], sd[k]) for k in keys)
    torch.save(sd, tmp_path / "w.pth")
    load_weights(build_dit(micro_cfg, seed=4), tmp_path / "w.pth")


def test_wrong_layout_names_the_key(tmp_path, micro_cfg):
    a = build_dit(micro_cfg)
    sd = dict(a.state_dict())
    sd["blocks.0.self_attn.qq.weight"] = sd.pop("blocks.0.self_attn.q.weight")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"blocks\.0\.self_attn\.q\.weight"):
        load_weights(a, tmp_path / "bad.safetensors")
    bigger = build_dit(ModelConfig(**{**micro_cfg.__dict__, "ffn_dim": 96}))
    save_weights(bigger, tmp_path / "big.safetensors")
    with pytest.raises(ValueError, match="wrong shape"):
        load_weights(a, tmp_path / "big.safetensors")


def test_per_frame_timesteps_equal_scalar_when_constant(micro_cfg):
    m = build_dit(micro_cfg, zero_head=False).eval()
    x, text = _inputs(micro_cfg)
    cond = m.encode_text(text)
    with torch.no_grad():
        a = m(x, torch.tensor([300.0]), cond)
        b = m(x, torch.full((1, 3), 300.0), cond)
        c = m(x, torch.tensor([[300.0, 300.0, 900.0]]), cond)
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, c, atol=1e-4)  # the third frame's level changes the output


def test_kv_context_equals_block_causal_full_forward(micro_cfg):
    """Caching the first frames' pre-RoPE K/V and querying the rest equals one masked forward."""
    m = build_dit(micro_cfg, zero_head=False).eval()
    x, text = _inputs(micro_cfg, frames=4)
    cond = m.encode_text(text)
    t = torch.tensor([[0.0, 0.0, 700.0, 400.0]])
    tokens_per_frame = 4
    # full forward: frames 0-1 (clean) attend among themselves; frames 2-3 attend to everything
    blk = torch.tensor([0, 0, 1, 1]).repeat_interleave(tokens_per_frame)
    mask = blk[:, None] >= blk[None, :]
    with torch.no_grad():
        full = m(x, t, cond, attn_mask=mask)
        _, ctx = m(x[:, :2], t[:, :2], cond, return_kv=True)
        cached = m(x[:, 2:], t[:, 2:], cond, kv_context=ctx)
    assert torch.allclose(cached, full[:, 2:], atol=1e-5)


def test_block_causal_mask_shape():
    m = block_causal_mask(3, 2, 4)
    assert m.shape == (6, 10) and m[:, :4].all() and not m[0, 6] and m[5, 4:].all()


def test_gradient_checkpointing_same_gradients(micro_cfg):
    m = build_dit(micro_cfg, zero_head=False)
    x, text = _inputs(micro_cfg)
    grads = []
    for ckpt in (False, True):
        m.zero_grad()
        m.gradient_checkpointing = ckpt
        m(x, torch.tensor([400.0]), m.encode_text(text)).square().mean().backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_zero_head_init_predicts_zero_flow(micro_cfg):
    m = build_dit(micro_cfg)
    x, text = _inputs(micro_cfg)
    with torch.no_grad():
        assert m(x, torch.tensor([500.0]), m.encode_text(text)).abs().max() == 0


def test_x0_prediction_returns_the_flow_of_the_heads_x0(micro_cfg):
    """prediction=x0: same weights, the head's output is x0_hat and forward returns
    (x - x0_hat) / max(sigma, 0.05), per sample and per frame; the KV-cache path agrees too."""
    import dataclasses

    flow_m = build_dit(micro_cfg, zero_head=False).eval()
    x0_m = build_dit(dataclasses.replace(micro_cfg, prediction="x0")).eval()
    x0_m.load_state_dict(flow_m.state_dict())
    x, text = _inputs(micro_cfg, frames=4)
    cond = flow_m.encode_text(text)
    with torch.no_grad():
        t = torch.tensor([600.0])
        assert torch.allclose(x0_m(x, t, cond), (x - flow_m(x, t, cond)) / 0.6, atol=1e-5)
        tf = torch.tensor([[0.0, 20.0, 700.0, 400.0]])  # clamped to 0.05 below t = 50
        sigma = torch.tensor([0.05, 0.05, 0.7, 0.4]).view(1, 4, 1, 1, 1)
        assert torch.allclose(x0_m(x, tf, cond), (x - flow_m(x, tf, cond)) / sigma, atol=1e-4)
        _, ctx = x0_m(x[:, :2], tf[:, :2], cond, return_kv=True)
        cached = x0_m(x[:, 2:], tf[:, 2:], cond, kv_context=ctx)
        _, ctx_f = flow_m(x[:, :2], tf[:, :2], cond, return_kv=True)
        assert torch.allclose(cached, (x[:, 2:] - flow_m(x[:, 2:], tf[:, 2:], cond, kv_context=ctx_f)) / sigma[:, 2:],
                              atol=1e-4)
        # a zero head predicts x0 = 0, i.e. the flow is x / sigma
        fresh = build_dit(dataclasses.replace(micro_cfg, prediction="x0"))
        assert torch.allclose(fresh(x, t, cond), x / 0.6, atol=1e-6)


def test_export_config_must_match_the_model_config(tmp_path, micro_cfg):
    """An x0-predicting export loads with the same shapes into a flow model: only config.json can
    tell, so the generator and every training stage check it and name the key."""
    import dataclasses

    from pipeline.config import ConfigError
    from pipeline.networks.checkpoints import check_export_model

    x0_cfg = dataclasses.replace(micro_cfg, prediction="x0")
    save_weights(build_dit(x0_cfg), tmp_path / "model.safetensors")
    check_export_model(tmp_path, micro_cfg)  # no config.json (e.g. Wan's own weights): not checked
    (tmp_path / "config.json").write_text(json.dumps({"model": {**dataclasses.asdict(x0_cfg), "weights": "elsewhere"}}))
    check_export_model(tmp_path, x0_cfg)  # same settings; `weights` may differ
    with pytest.raises(ConfigError, match=r"^model\.prediction: .*prediction=x0, config says flow"):
        check_export_model(tmp_path, micro_cfg)
