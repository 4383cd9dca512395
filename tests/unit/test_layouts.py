"""Key layouts: Wan <-> diffusers on the real Wan2.1 key lists, reference-wrapper stripping, shape inference."""

from __future__ import annotations

import pytest
import torch

from diffusers_keys import diffusers_script_rename

from pipeline.config import ModelConfig
from pipeline.networks.checkpoints import check_state_dict
from pipeline.networks.layouts import (
    WAN_HEAD_DIM,
    diffusers_config,
    diffusers_to_wan,
    infer_wan_shape,
    model_fields_from_diffusers,
    strip_reference_wrappers,
    wan_to_diffusers,
)
from pipeline.networks.wan_dit import build_dit

def meta_state(keys: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in keys.items()}


@pytest.mark.parametrize("size", ["t2v_1.3b", "t2v_14b"])
def test_real_wan_keys_map_like_diffusers_script_and_back(wan_layout, size):
    keys = wan_layout[size]["keys"]
    diff = wan_to_diffusers(keys)
    assert len(diff) == len(keys)  # nothing merged or lost
    assert diff == {diffusers_script_rename(k): v for k, v in keys.items()}
    assert diffusers_to_wan(diff) == keys  # the inverse restores every key and shape
    assert "scale_shift_table" in diff and "blocks.0.scale_shift_table" in diff
    assert "blocks.0.norm2.weight" in diff and not any(".norm3." in k for k in diff)


@pytest.mark.parametrize("size, dim, heads, layers, ffn", [("t2v_1.3b", 1536, 12, 30, 8960),
                                                           ("t2v_14b", 5120, 40, 40, 13824)])
def test_shape_inferred_from_real_wan_keys_builds_a_matching_dit(wan_layout, size, dim, heads, layers, ffn):
    state = meta_state(wan_layout[size]["keys"])
    shape = infer_wan_shape(state)
    assert shape == {"dim": dim, "in_dim": 16, "patch_size": [1, 2, 2], "ffn_dim": ffn, "num_layers": layers,
                     "out_dim": 16, "text_dim": 4096, "freq_dim": 256, "qk_norm": True, "cross_attn_norm": True}
    assert dim // WAN_HEAD_DIM == heads
    cfg = ModelConfig(**{**shape, "patch_size": tuple(shape["patch_size"])}, num_heads=heads, text_len=512)
    check_state_dict(build_dit(cfg, device="meta"), state, source=size)
    # diffusers' config of it is the one diffusers' conversion script uses for Wan-T2V-1.3B / 14B
    dcfg = diffusers_config({**shape, "num_heads": heads, "eps": 1e-6})
    assert (dcfg["num_attention_heads"], dcfg["attention_head_dim"], dcfg["ffn_dim"], dcfg["num_layers"]) == \
        (heads, 128, ffn, layers)
    assert dcfg["qk_norm"] == "rms_norm_across_heads" and dcfg["in_channels"] == dcfg["out_channels"] == 16
    back = model_fields_from_diffusers(dcfg)
    assert {k: back[k] for k in shape} == shape and back["num_heads"] == heads


def test_tiny_model_without_optional_norms_round_trips():
    cfg = ModelConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=3, in_dim=4, out_dim=4, text_dim=8,
                      qk_norm=False, cross_attn_norm=False, patch_size=(1, 1, 2))
    state = build_dit(cfg).state_dict()
    assert diffusers_to_wan(wan_to_diffusers(state)).keys() == state.keys()
    shape = infer_wan_shape(state)
    assert shape["qk_norm"] is False and shape["cross_attn_norm"] is False
    assert shape["patch_size"] == [1, 1, 2] and shape["num_layers"] == 3 and shape["out_dim"] == 4
    assert diffusers_config({**shape, "num_heads": 2, "eps": 1e-6})["qk_norm"] is None


def test_unknown_and_i2v_keys_are_refused():
    with pytest.raises(ValueError, match="image-to-video"):
        wan_to_diffusers({"blocks.0.cross_attn.k_img.weight": 1})
    with pytest.raises(ValueError, match=r"no Wan counterpart: blocks\.0\.attn1\.mystery\.weight"):
        diffusers_to_wan({"blocks.0.attn1.mystery.weight": 1})
    with pytest.raises(ValueError, match="only WanTransformer3DModel"):
        model_fields_from_diffusers({"_class_name": "WanVACETransformer3DModel"})
    with pytest.raises(ValueError, match="image-to-video"):
        model_fields_from_diffusers({"image_dim": 1280})
    with pytest.raises(ValueError, match="not a Wan DiT state dict"):
        infer_wan_shape({"encoder.weight": torch.zeros(1)})


def test_reference_wrappers_are_stripped():
    """RF / Self-Forcing: `model.` (WanDiffusionWrapper.model) and the FSDP names their EMA keeps."""
    t = torch.zeros(1)
    state = {"model.patch_embedding.weight": t,
             "model.blocks.0._fsdp_wrapped_module.self_attn.q.weight": t,
             "model.blocks.1._fsdp_wrapped_module._checkpoint_wrapped_module.ffn.0.bias": t,
             "_orig_mod.model.head.modulation": t}
    assert sorted(strip_reference_wrappers(state)) == ["blocks.0.self_attn.q.weight", "blocks.1.ffn.0.bias",
                                                       "head.modulation", "patch_embedding.weight"]
    assert strip_reference_wrappers({"module.head.head.weight": t}) == {"head.head.weight": t}
    assert strip_reference_wrappers({"head.head.weight": t}) == {"head.head.weight": t}  # already Wan's
    with pytest.raises(ValueError, match=r"outside the wrapper's `model.` DiT .*_cls_pred_branch"):
        strip_reference_wrappers({"model.head.head.weight": t, "_cls_pred_branch.0.weight": t})
