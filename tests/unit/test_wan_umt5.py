"""text.kind=umt5 from Wan's own `models_t5_umt5-xxl-enc-bf16.pth` (Wan's T5 layout) + a tokenizer folder.

The reference is Wan2.1's wan/modules/t5.py T5Encoder forward, restated below from that file
(shared_pos=False: a relative position embedding per block), run on the same random weights.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from pipeline.config import TextConfig
from pipeline.networks.layouts import hf_t5_to_wan, umt5_config_from_wan, wan_t5_to_hf
from pipeline.networks.text_encoders import build_text_encoder, minilm_model_dir

L = 16


class Payload:
    """Stands for any pickled object: weights_only loading must refuse to build it."""


DIM, HEADS, FFN, LAYERS, BUCKETS = 32, 4, 48, 2, 32
PROMPTS = ["a red fox runs through fresh snow", "waves", "a timelapse of clouds over a mountain lake at dusk"]


def wan_t5_state(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under Wan's T5Encoder names and shapes (t5.py: T5SelfAttention, T5FeedForward, ...)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    state = OrderedDict(token_embedding=None)
    state["token_embedding.weight"] = r(vocab, DIM, scale=1.0)
    del state["token_embedding"]
    for i in range(LAYERS):
        b = f"blocks.{i}."
        state[b + "norm1.weight"] = 1 + r(DIM, scale=0.1)
        for p in "qkvo":
            state[b + f"attn.{p}.weight"] = r(DIM, DIM)
        state[b + "norm2.weight"] = 1 + r(DIM, scale=0.1)
        state[b + "ffn.gate.0.weight"] = r(FFN, DIM)
        state[b + "ffn.fc1.weight"] = r(FFN, DIM)
        state[b + "ffn.fc2.weight"] = r(DIM, FFN)
        state[b + "pos_embedding.embedding.weight"] = r(BUCKETS, HEADS, scale=1.0)
    state["norm.weight"] = 1 + r(DIM, scale=0.1)
    return dict(state)


# ------------------------------------------------------------------ Wan2.1 wan/modules/t5.py, encoder only
def _bucket(rel_pos: torch.Tensor, num_buckets: int = BUCKETS, max_dist: int = 128) -> torch.Tensor:
    num_buckets //= 2  # bidirectional
    rel_buckets = (rel_pos > 0).long() * num_buckets
    rel_pos = torch.abs(rel_pos)
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(rel_pos.float() / max_exact) / math.log(max_dist / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return rel_buckets + torch.where(rel_pos < max_exact, rel_pos, large)


def _norm(x, w):
    return w * (x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + 1e-6))


def wan_t5_encode(s: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    b, n = ids.shape
    x = F.embedding(ids, s["token_embedding.weight"])
    rel = torch.arange(n)[None] - torch.arange(n)[:, None]
    for i in range(LAYERS):
        p = f"blocks.{i}."
        bias = F.embedding(_bucket(rel), s[p + "pos_embedding.embedding.weight"]).permute(2, 0, 1)[None]
        h = _norm(x, s[p + "norm1.weight"])
        q, k, v = (F.linear(h, s[p + f"attn.{c}.weight"]).view(b, n, HEADS, -1) for c in "qkv")
        attn = torch.einsum("binc,bjnc->bnij", q, k) + bias  # T5: no scaling
        attn = attn.masked_fill(mask.view(b, 1, 1, n) == 0, torch.finfo(x.dtype).min)
        out = torch.einsum("bnij,bjnc->binc", F.softmax(attn.float(), dim=-1), v).reshape(b, n, -1)
        x = x + F.linear(out, s[p + "attn.o.weight"])
        h = _norm(x, s[p + "norm2.weight"])
        gate = F.gelu(F.linear(h, s[p + "ffn.gate.0.weight"]), approximate="tanh")
        x = x + F.linear(F.linear(h, s[p + "ffn.fc1.weight"]) * gate, s[p + "ffn.fc2.weight"])
    return _norm(x, s["norm.weight"])


@pytest.fixture(scope="module")
def tokenizer():
    # umT5's sentencepiece tokenizer is not available offline; any tokenizer folder exercises the same path.
    return AutoTokenizer.from_pretrained(minilm_model_dir(), local_files_only=True)


@pytest.fixture(scope="module")
def wan_release(tmp_path_factory, tokenizer):
    """A Wan2.1 release folder: models_t5_umt5-xxl-enc-bf16.pth + google/umt5-xxl/ tokenizer files."""
    root = tmp_path_factory.mktemp("wan_release")
    state = wan_t5_state(len(tokenizer))
    torch.save(state, root / "models_t5_umt5-xxl-enc-bf16.pth")
    tokenizer.save_pretrained(root / "google" / "umt5-xxl")
    return root, state


def wan_reference(state, tokenizer, prompts: list[str], max_length: int) -> torch.Tensor:
    """Wan's T5EncoderModel.__call__: padded ids + mask through the encoder, rows past each length zeroed."""
    batch = tokenizer(prompts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        out = wan_t5_encode(state, batch["input_ids"], batch["attention_mask"])
    return out.masked_fill(batch["attention_mask"][..., None] == 0, 0.0)


def test_wan_pth_encodes_like_wans_t5_encoder(wan_release, tokenizer):
    root, state = wan_release
    enc = build_text_encoder(TextConfig(kind="umt5", path=str(root / "models_t5_umt5-xxl-enc-bf16.pth"),
                                        tokenizer=str(root / "google" / "umt5-xxl"), max_length=L))
    assert enc.hidden_dim == DIM and not any(p.is_meta for p in enc.model.parameters())
    assert enc.model.encoder.embed_tokens.weight is enc.model.shared.weight
    out = enc.encode(PROMPTS)
    assert out.shape == (len(PROMPTS), L, DIM)
    torch.testing.assert_close(out, wan_reference(state, tokenizer, PROMPTS, L), atol=1e-4, rtol=1e-4)
    # text.tokenizer unset: the release's google/umt5-xxl/ beside the .pth is used
    default = build_text_encoder(TextConfig(kind="umt5", path=str(root / "models_t5_umt5-xxl-enc-bf16.pth"),
                                            max_length=L))
    torch.testing.assert_close(default.encode(PROMPTS), out)


def test_config_inferred_and_keys_invert(wan_release):
    _, state = wan_release
    kw = umt5_config_from_wan(state)
    assert (kw["d_model"], kw["num_heads"], kw["d_kv"], kw["d_ff"], kw["num_layers"],
            kw["relative_attention_num_buckets"]) == (DIM, HEADS, DIM // HEADS, FFN, LAYERS, BUCKETS)
    model = UMT5EncoderModel(UMT5Config(**kw))
    hf = wan_t5_to_hf(state)
    assert set(hf) == set(model.state_dict())  # every transformers key, nothing extra
    assert hf_t5_to_wan(hf) == state


def test_missing_tokenizer_and_non_tensor_pickles_are_refused(tmp_path, wan_release, tokenizer):
    root, state = wan_release
    lone = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(state, lone)
    with pytest.raises(FileNotFoundError, match=r"text\.tokenizer"):
        build_text_encoder(TextConfig(kind="umt5", path=str(lone), max_length=L))
    with pytest.raises(FileNotFoundError, match=r"text\.tokenizer: .*nowhere"):
        build_text_encoder(TextConfig(kind="umt5", path=str(lone), tokenizer=str(tmp_path / "nowhere"), max_length=L))

    tok = root / "google" / "umt5-xxl"
    evil = tmp_path / "evil.pth"
    torch.save({"token_embedding.weight": torch.zeros(2, 2), "hook": Payload()}, evil)  # an object, not data
    with pytest.raises(ValueError, match=r"evil\.pth.*not a weights-only torch state dict"):
        build_text_encoder(TextConfig(kind="umt5", path=str(evil), tokenizer=str(tok), max_length=L))
    nested = tmp_path / "nested.pth"
    torch.save({"model": state}, nested)
    with pytest.raises(ValueError, match="expected a state dict of tensors"):
        build_text_encoder(TextConfig(kind="umt5", path=str(nested), tokenizer=str(tok), max_length=L))
