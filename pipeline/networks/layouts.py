"""Key layouts of the reference checkpoints, as pure name mappings (no I/O, no models).

Three foreign layouts meet Wan's native DiT layout (the one `WanDiT` uses) and Wan's native umT5:

1. Rolling Forcing (TencentARC/RollingForcing) and Self-Forcing (guandeh17/Self-Forcing) `.pt` files.
   Their trainers save `torch.save({"generator": ..., "critic": ..., "generator_ema": ...})`
   (trainer/distillation.py `save()`; trainer/ode.py saves only `"generator"`), where

       generator      = FSDP FULL_STATE_DICT of `WanDiffusionWrapper` -> keys `model.<wan key>`
       critic         = the same for the fake score (a bidirectional WanModel)
       generator_ema  = EMA_FSDP.shadow: `fsdp_module.module.named_parameters()` of the wrapper, so
                        nested FSDP/activation-checkpoint wrappers stay in the names:
                        `model.blocks.0._fsdp_wrapped_module.self_attn.q.weight`

   (utils/wan_wrapper.py: `self.model = CausalWanModel.from_pretrained(...)`; utils/distributed.py
   `EMA_FSDP`). Their inference.py loads `state_dict['generator']`, or with `--use_ema`
   `state_dict['generator_ema']` after removing `_fsdp_wrapped_module.`; their trainers strip
   `_fsdp_wrapped_module.`, `_checkpoint_wrapped_module.` and `_orig_mod.` (`rename_param`).
   `strip_reference_wrappers` undoes all of it: what remains is Wan's native layout.

2. diffusers `WanTransformer3DModel` (diffusers scripts/convert_wan_to_diffusers.py,
   TRANSFORMER_KEYS_RENAME_DICT; src/diffusers/models/transformers/transformer_wan.py):

       Wan (native)                      diffusers
       patch_embedding                   patch_embedding
       text_embedding.0 / .2             condition_embedder.text_embedder.linear_1 / linear_2
       time_embedding.0 / .2             condition_embedder.time_embedder.linear_1 / linear_2
       time_projection.1                 condition_embedder.time_proj
       head.head                         proj_out
       head.modulation                   scale_shift_table              [1, 2, dim]
       blocks.N.modulation               blocks.N.scale_shift_table     [1, 6, dim]
       blocks.N.self_attn.{q,k,v}        blocks.N.attn1.to_{q,k,v}
       blocks.N.self_attn.o              blocks.N.attn1.to_out.0
       blocks.N.self_attn.norm_{q,k}     blocks.N.attn1.norm_{q,k}
       blocks.N.cross_attn.*             blocks.N.attn2.*  (same as attn1)
       blocks.N.norm3 (cross-attn norm)  blocks.N.norm2   (Wan runs norm1, norm3, norm2; diffusers renumbers)
       blocks.N.ffn.0 / ffn.2            blocks.N.ffn.net.0.proj / ffn.net.2

   Shapes are identical on both sides (no reshapes); the norms without weights (Wan's norm1/norm2,
   head.norm) have no keys. Image-to-video keys (img_emb, k_img, ...) are not mapped: the DiT is T2V.

3. Wan's own umT5 encoder (`models_t5_umt5-xxl-enc-bf16.pth`, Wan2.1 wan/modules/t5.py `T5Encoder`
   with shared_pos=False) and transformers' `UMT5EncoderModel`:

       Wan T5Encoder                          transformers UMT5EncoderModel
       token_embedding                        shared  (and encoder.embed_tokens, tied)
       blocks.N.norm1                         encoder.block.N.layer.0.layer_norm
       blocks.N.attn.{q,k,v,o}                encoder.block.N.layer.0.SelfAttention.{q,k,v,o}
       blocks.N.pos_embedding.embedding       encoder.block.N.layer.0.SelfAttention.relative_attention_bias
       blocks.N.norm2                         encoder.block.N.layer.1.layer_norm
       blocks.N.ffn.gate.0                    encoder.block.N.layer.1.DenseReluDense.wi_0  (gelu(gate x) ...)
       blocks.N.ffn.fc1                       encoder.block.N.layer.1.DenseReluDense.wi_1  (... * fc1 x)
       blocks.N.ffn.fc2                       encoder.block.N.layer.1.DenseReluDense.wo
       norm                                   encoder.final_layer_norm

   Both compute the same function: gated tanh-GELU FFN, unscaled attention with a per-layer
   bidirectional relative bias (num_buckets=32, max_distance=128), RMS norms with eps 1e-6.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

# ----------------------------------------------------------------------------- reference .pt wrappers
# Wrapper segments FSDP, activation checkpointing and torch.compile insert anywhere in a name.
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
WRAPPER_PREFIX = "model."  # WanDiffusionWrapper.model holds the WanModel / CausalWanModel
REFERENCE_KEYS = ("generator", "generator_ema", "critic")


def strip_reference_wrappers(state: Mapping[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
    """Keys of a Rolling Forcing / Self-Forcing `generator` (or `generator_ema`, `critic`) dict -> Wan keys.

    Removes FSDP / checkpoint-wrapper / torch.compile segments, a DDP `module.` prefix, then the
    wrapper's `model.` prefix. Keys already in Wan's layout (no `model.` anywhere) pass unchanged.
    A dict mixing `model.` keys with others is refused: those others are not part of the DiT.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        for seg in WRAPPER_SEGMENTS:
            key = key.replace(seg, "")
        if key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    prefixed = [k for k in out if k.startswith(WRAPPER_PREFIX)]
    if not prefixed:
        return out
    others = sorted(k for k in out if not k.startswith(WRAPPER_PREFIX))
    if others:
        raise ValueError(f"{source}: {len(others)} key(s) outside the wrapper's `model.` DiT "
                         f"(e.g. {', '.join(others[:3])}); not a generator state dict")
    return {k[len(WRAPPER_PREFIX):]: v for k, v in out.items()}


# ----------------------------------------------------------------------------- Wan <-> diffusers DiT
# Module paths (a key is `<module path>.<param>`); block-level paths are relative to `blocks.N.`.
_DIT_TOP = (
    ("patch_embedding", "patch_embedding"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.head", "proj_out"),
)
_DIT_BLOCK = (
    ("self_attn.q", "attn1.to_q"), ("self_attn.k", "attn1.to_k"), ("self_attn.v", "attn1.to_v"),
    ("self_attn.o", "attn1.to_out.0"), ("self_attn.norm_q", "attn1.norm_q"), ("self_attn.norm_k", "attn1.norm_k"),
    ("cross_attn.q", "attn2.to_q"), ("cross_attn.k", "attn2.to_k"), ("cross_attn.v", "attn2.to_v"),
    ("cross_attn.o", "attn2.to_out.0"), ("cross_attn.norm_q", "attn2.norm_q"), ("cross_attn.norm_k", "attn2.norm_k"),
    ("norm3", "norm2"),
    ("ffn.0", "ffn.net.0.proj"), ("ffn.2", "ffn.net.2"),
)
# Bare parameters (no module path): the adaLN tables.
_DIT_TOP_PARAMS = (("head.modulation", "scale_shift_table"),)
_DIT_BLOCK_PARAMS = (("modulation", "scale_shift_table"),)
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_I2V_HINTS = ("img_emb", "k_img", "v_img", "norm_k_img", "image_embedder", "add_k_proj", "add_v_proj",
              "norm_added_k")


def _rename(key: str, modules: tuple[tuple[str, str], ...], params: tuple[tuple[str, str], ...],
            forward: bool) -> str | None:
    for a, b in params:
        src, dst = (a, b) if forward else (b, a)
        if key == src:
            return dst
    module, _, param = key.rpartition(".")
    for a, b in modules:
        src, dst = (a, b) if forward else (b, a)
        if module == src:
            return f"{dst}.{param}"
    return None


def _map_dit_key(key: str, forward: bool) -> str | None:
    m = _BLOCK.match(key)
    if m:
        inner = _rename(m.group(2), _DIT_BLOCK, _DIT_BLOCK_PARAMS, forward)
        return None if inner is None else f"blocks.{m.group(1)}.{inner}"
    return _rename(key, _DIT_TOP, _DIT_TOP_PARAMS, forward)


def _map_dit(state: Mapping[str, Any], forward: bool, source: str) -> dict[str, Any]:
    out, unknown = {}, []
    for key, value in state.items():
        new = _map_dit_key(key, forward)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        i2v = any(h in k for k in unknown for h in _I2V_HINTS)
        what = ("image-to-video keys (only text-to-video Wan DiTs are supported)" if i2v else
                f"key(s) with no {'diffusers' if forward else 'Wan'} counterpart")
        raise ValueError(f"{source}: {len(unknown)} {what}: {', '.join(sorted(unknown)[:5])}"
                         f"{' ...' if len(unknown) > 5 else ''}")
    return out


def wan_to_diffusers(state: Mapping[str, Any], source: str = "weights") -> dict[str, Any]:
    """Wan-native DiT keys -> diffusers WanTransformer3DModel keys (values untouched)."""
    return _map_dit(state, True, source)


def diffusers_to_wan(state: Mapping[str, Any], source: str = "weights") -> dict[str, Any]:
    """diffusers WanTransformer3DModel keys -> Wan-native DiT keys (values untouched)."""
    return _map_dit(state, False, source)


# ----------------------------------------------------------------------------- DiT shape from weights
WAN_HEAD_DIM = 128  # Wan2.1's published head dim: 1.3B dim 1536 / 12 heads, 14B dim 5120 / 40 heads


def infer_wan_shape(state: Mapping[str, Tensor], source: str = "weights") -> dict[str, Any]:
    """ModelConfig fields the Wan-native weights fix: dim, ffn_dim, num_layers, in_dim, out_dim,
    patch_size, text_dim, freq_dim, qk_norm, cross_attn_norm. (num_heads, eps, text_len, rope_theta
    and prediction are not in the tensors.)"""
    need = ("patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight",
            "head.head.weight", "blocks.0.ffn.0.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise ValueError(f"{source}: not a Wan DiT state dict: missing {', '.join(missing)} "
                         f"(has e.g. {', '.join(sorted(state)[:3]) or 'nothing'})")
    dim, in_dim, *patch = state["patch_embedding.weight"].shape
    patch_size = [int(p) for p in patch]
    layers = {int(m.group(1)) for k in state if (m := _BLOCK.match(k))}
    head_rows = state["head.head.weight"].shape[0]
    n_patch = patch_size[0] * patch_size[1] * patch_size[2]
    if head_rows % n_patch:
        raise ValueError(f"{source}: head.head.weight has {head_rows} rows, not a multiple of the patch "
                         f"volume {n_patch}")
    return {
        "dim": int(dim), "in_dim": int(in_dim), "patch_size": patch_size,
        "ffn_dim": int(state["blocks.0.ffn.0.weight"].shape[0]),
        "num_layers": max(layers) + 1 if layers else 0,
        "out_dim": head_rows // n_patch,
        "text_dim": int(state["text_embedding.0.weight"].shape[1]),
        "freq_dim": int(state["time_embedding.0.weight"].shape[1]),
        "qk_norm": "blocks.0.self_attn.norm_q.weight" in state,
        "cross_attn_norm": "blocks.0.norm3.weight" in state,
    }


def diffusers_config(model: Mapping[str, Any]) -> dict[str, Any]:
    """A WanTransformer3DModel config.json for a ModelConfig (as a dict). Wan's RoPE theta 10000 and
    flow prediction are fixed in diffusers, so callers refuse models that differ."""
    dim, heads = int(model["dim"]), int(model["num_heads"])
    return {
        "_class_name": "WanTransformer3DModel",
        "_diffusers_version": "0.33.0",
        "added_kv_proj_dim": None,
        "attention_head_dim": dim // heads,
        "cross_attn_norm": bool(model["cross_attn_norm"]),
        "eps": float(model["eps"]),
        "ffn_dim": int(model["ffn_dim"]),
        "freq_dim": int(model["freq_dim"]),
        "image_dim": None,
        "in_channels": int(model["in_dim"]),
        "num_attention_heads": heads,
        "num_layers": int(model["num_layers"]),
        "out_channels": int(model["out_dim"]),
        "patch_size": [int(p) for p in model["patch_size"]],
        "pos_embed_seq_len": None,
        "qk_norm": "rms_norm_across_heads" if model["qk_norm"] else None,
        "rope_max_seq_len": 1024,
        "text_dim": int(model["text_dim"]),
    }


def model_fields_from_diffusers(config: Mapping[str, Any], source: str = "config.json") -> dict[str, Any]:
    """ModelConfig fields a WanTransformer3DModel config.json states (diffusers' defaults fill gaps)."""
    name = config.get("_class_name", "WanTransformer3DModel")
    if name != "WanTransformer3DModel":
        raise ValueError(f"{source}: _class_name {name!r}; only WanTransformer3DModel (text-to-video) is supported")
    if config.get("image_dim") is not None or config.get("added_kv_proj_dim") is not None:
        raise ValueError(f"{source}: an image-to-video transformer (image_dim / added_kv_proj_dim set); "
                         f"only text-to-video Wan DiTs are supported")
    heads, head_dim = int(config.get("num_attention_heads", 40)), int(config.get("attention_head_dim", 128))
    fields = {
        "dim": heads * head_dim, "num_heads": heads,
        "ffn_dim": int(config.get("ffn_dim", 13824)), "num_layers": int(config.get("num_layers", 40)),
        "in_dim": int(config.get("in_channels", 16)),
        "out_dim": int(config.get("out_channels") or config.get("in_channels", 16)),
        "patch_size": [int(p) for p in config.get("patch_size", (1, 2, 2))],
        "text_dim": int(config.get("text_dim", 4096)), "freq_dim": int(config.get("freq_dim", 256)),
        "eps": float(config.get("eps", 1e-6)),
        "qk_norm": config.get("qk_norm", "rms_norm_across_heads") is not None,
        "cross_attn_norm": bool(config.get("cross_attn_norm", True)),
    }
    return fields


# ----------------------------------------------------------------------------- Wan umT5 <-> transformers
_T5_BLOCK = (
    ("norm1.weight", "layer.0.layer_norm.weight"),
    ("attn.q.weight", "layer.0.SelfAttention.q.weight"),
    ("attn.k.weight", "layer.0.SelfAttention.k.weight"),
    ("attn.v.weight", "layer.0.SelfAttention.v.weight"),
    ("attn.o.weight", "layer.0.SelfAttention.o.weight"),
    ("pos_embedding.embedding.weight", "layer.0.SelfAttention.relative_attention_bias.weight"),
    ("norm2.weight", "layer.1.layer_norm.weight"),
    ("ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"),
    ("ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"),
    ("ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight"),
)
_T5_TOP = (("token_embedding.weight", "shared.weight"), ("norm.weight", "encoder.final_layer_norm.weight"))
_HF_TIED = "encoder.embed_tokens.weight"


def wan_t5_to_hf(state: Mapping[str, Tensor], source: str = "umT5 weights") -> dict[str, Tensor]:
    """Wan T5Encoder keys -> UMT5EncoderModel keys (the embedding under both tied names)."""
    if "encoder.block.0.layer.0.SelfAttention.q.weight" in state:
        raise ValueError(f"{source}: already in transformers' UMT5 layout; point text.path at its directory")
    if "blocks.0.pos_embedding.embedding.weight" not in state and "pos_embedding.embedding.weight" in state:
        raise ValueError(f"{source}: a shared-position T5 (Wan's umT5 has per-layer position embeddings)")
    out, unknown = {}, []
    top = dict(_T5_TOP)
    block_map = dict(_T5_BLOCK)
    for key, value in state.items():
        m = _BLOCK.match(key)
        if key in top:
            out[top[key]] = value
        elif m and m.group(2) in block_map:
            out[f"encoder.block.{m.group(1)}.{block_map[m.group(2)]}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{source}: {len(unknown)} key(s) not in Wan's umT5 encoder layout: "
                         f"{', '.join(sorted(unknown)[:5])}{' ...' if len(unknown) > 5 else ''}")
    if "shared.weight" not in out:
        raise ValueError(f"{source}: no token_embedding.weight; not Wan's umT5 encoder (keys: "
                         f"{', '.join(sorted(state)[:3])} ...)")
    out[_HF_TIED] = out["shared.weight"]
    return out


def hf_t5_to_wan(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """UMT5EncoderModel keys -> Wan T5Encoder keys (the inverse of `wan_t5_to_hf`)."""
    top = {b: a for a, b in _T5_TOP}
    block_map = {b: a for a, b in _T5_BLOCK}
    out = {}
    for key, value in state.items():
        if key == _HF_TIED:
            continue
        m = re.match(r"^encoder\.block\.(\d+)\.(.+)$", key)
        if key in top:
            out[top[key]] = value
        elif m and m.group(2) in block_map:
            out[f"blocks.{m.group(1)}.{block_map[m.group(2)]}"] = value
        else:
            raise ValueError(f"{key}: not a UMT5 encoder key")
    return out


def umt5_config_from_wan(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """UMT5Config kwargs of Wan's umT5 encoder, read from the tensors (umt5-xxl: vocab 256384,
    d_model 4096, d_ff 10240, 64 heads of 64, 24 layers, 32 buckets)."""
    vocab, d_model = state["token_embedding.weight"].shape
    buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    layers = {int(m.group(1)) for k in state if (m := _BLOCK.match(k))}
    return {
        "vocab_size": int(vocab), "d_model": int(d_model), "num_heads": int(heads),
        "d_kv": int(state["blocks.0.attn.q.weight"].shape[0]) // int(heads),
        "d_ff": int(state["blocks.0.ffn.fc1.weight"].shape[0]), "num_layers": max(layers) + 1,
        "relative_attention_num_buckets": int(buckets), "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6, "is_encoder_decoder": False,
        "dropout_rate": 0.0,
    }
