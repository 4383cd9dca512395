"""The diffusers side of the Wan <-> diffusers key mapping, restated from diffusers itself for tests.

Importable by tests as `from diffusers_keys import ...` (tests/ is on sys.path, as for conftest).
"""

from __future__ import annotations

# diffusers scripts/convert_wan_to_diffusers.py TRANSFORMER_KEYS_RENAME_DICT (the text-to-video entries),
# applied the way that script applies it: every pair, in order, as a substring replace on each key.
# This is the independent reference the mapping table in layouts.py is checked against.
DIFFUSERS_RENAME = {
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.modulation": "scale_shift_table",
    "head.head": "proj_out",
    "modulation": "scale_shift_table",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    "norm2": "norm__placeholder",
    "norm3": "norm2",
    "norm__placeholder": "norm3",
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k",
}


def diffusers_script_rename(key: str) -> str:
    for old, new in DIFFUSERS_RENAME.items():
        key = key.replace(old, new)
    return key
