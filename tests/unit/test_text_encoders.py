"""Text encoders against the real all-MiniLM-L6-v2 weights and a tiny real umT5 checkpoint on disk."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from pipeline.config import TextConfig
from pipeline.networks.text_encoders import (
    MiniLMEncoder,
    TextEncoder,
    UMT5Encoder,
    build_text_encoder,
    minilm_model_dir,
)

L = 16
PROMPTS = ["a red fox runs through fresh snow", "waves", "a timelapse of clouds over a mountain lake at dusk"]
LONG_PROMPT = " ".join(["a slow cinematic pan across a crowded night market"] * 12)


def true_lengths(tokenizer, prompts: list[str], max_length: int) -> list[int]:
    return [min(len(tokenizer(p)["input_ids"]), max_length) for p in prompts]


def assert_zero_tail(out: torch.Tensor, lengths: list[int]) -> None:
    for i, n in enumerate(lengths):
        assert torch.all(out[i, n:] == 0), f"prompt {i}: rows {n}: must be exactly zero"
        assert torch.all(out[i, :n].norm(dim=-1) > 0), f"prompt {i}: a real token row is zero"


@pytest.fixture(scope="module")
def hf_tokenizer():
    return AutoTokenizer.from_pretrained(minilm_model_dir(), local_files_only=True)


# --------------------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return build_text_encoder(TextConfig(kind="minilm", max_length=L))


def test_minilm_shape_dtype_and_zero_padding(minilm, hf_tokenizer):
    assert isinstance(minilm, MiniLMEncoder)
    assert minilm.hidden_dim == 384 == TextConfig(kind="minilm").hidden_dim
    assert minilm.max_length == L
    out = minilm.encode(PROMPTS)
    assert out.shape == (len(PROMPTS), L, 384)
    assert out.dtype == torch.float32
    lengths = true_lengths(hf_tokenizer, PROMPTS, L)
    assert len(set(lengths)) == len(lengths) and max(lengths) < L  # distinct, untruncated
    assert_zero_tail(out, lengths)


def test_minilm_embedding_independent_of_batch_mates(minilm):
    alone = minilm.encode(["waves"])[0]
    batched = minilm.encode([PROMPTS[2], "waves", PROMPTS[0]])[1]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_minilm_different_prompts_differ(minilm):
    a, b = minilm.encode(["a cat sleeping on a sofa", "a rocket launching at night"])
    assert (a - b).abs().max() > 0.1
    # Same length in tokens, so the difference is in content, not in where the zero tail starts.
    assert F.cosine_similarity(a[:3].flatten(), b[:3].flatten(), dim=0) < 0.99


def test_minilm_truncates_to_max_length(minilm, hf_tokenizer):
    assert len(hf_tokenizer(LONG_PROMPT)["input_ids"]) > 64
    out = minilm.encode([LONG_PROMPT, "waves"])
    assert out.shape == (2, L, 384)
    assert torch.all(out[0].norm(dim=-1) > 0)  # every slot is a real token
    longer = build_text_encoder(TextConfig(kind="minilm", max_length=64)).encode([LONG_PROMPT])
    assert longer.shape == (1, 64, 384) and torch.all(longer[0].norm(dim=-1) > 0)


def test_minilm_pooled_matches_sentence_transformers(minilm, hf_tokenizer):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_model_dir()), device="cpu", local_files_only=True)
    reference = torch.as_tensor(st.encode(PROMPTS, convert_to_numpy=True))

    out = minilm.encode(PROMPTS)
    lengths = torch.tensor(true_lengths(hf_tokenizer, PROMPTS, L), dtype=torch.float32)
    pooled = F.normalize(out.sum(dim=1) / lengths[:, None], dim=-1)  # zero tail adds nothing to the sum
    cos = F.cosine_similarity(pooled, reference, dim=-1)
    assert torch.all(cos > 0.999), cos


def test_minilm_cache_and_to(minilm):
    again = build_text_encoder(TextConfig(kind="minilm", max_length=L), device="cpu")
    assert again is minilm
    other_len = build_text_encoder(TextConfig(kind="minilm", max_length=8))
    assert other_len is not minilm and other_len.model is minilm.model  # weights loaded once
    assert minilm.to("cpu") is minilm


def test_encode_rejects_bare_string_and_accepts_empty_batch(minilm):
    with pytest.raises(TypeError, match="list"):
        minilm.encode("a cat")
    assert minilm.encode([]).shape == (0, L, 384)


# ----------------------------------------------------------------------------------------- umT5


def save_tiny_umt5(directory, tokenizer, seed: int = 0) -> UMT5EncoderModel:
    config = UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = UMT5EncoderModel(config).eval()
    model.save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def umt5_dir(tmp_path_factory, hf_tokenizer):
    # umT5's sentencepiece tokenizer is not available offline; any tokenizer exercises the same path.
    directory = tmp_path_factory.mktemp("umt5")
    save_tiny_umt5(directory, hf_tokenizer)
    hf_tokenizer.save_pretrained(directory)
    return directory


def reference_umt5(directory, tokenizer, prompts: list[str], max_length: int) -> torch.Tensor:
    """Each prompt alone and unpadded through the saved model, then zero-padded: Wan's semantics."""
    model = UMT5EncoderModel.from_pretrained(directory, local_files_only=True).eval()
    rows = []
    for p in prompts:
        ids = tokenizer(p, truncation=True, max_length=max_length, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            h = model(input_ids=ids).last_hidden_state[0]
        rows.append(F.pad(h, (0, 0, 0, max_length - h.shape[0])))
    return torch.stack(rows)


def test_umt5_matches_transformers_on_disk_model(umt5_dir, hf_tokenizer):
    enc = build_text_encoder(TextConfig(kind="umt5", path=str(umt5_dir), max_length=L))
    assert isinstance(enc, UMT5Encoder)
    assert enc.hidden_dim == 32 and enc.max_length == L
    prompts = PROMPTS + [LONG_PROMPT]
    out = enc.encode(prompts)
    assert out.shape == (len(prompts), L, 32) and out.dtype == torch.float32
    assert_zero_tail(out, true_lengths(hf_tokenizer, prompts, L))
    torch.testing.assert_close(out, reference_umt5(umt5_dir, hf_tokenizer, prompts, L), atol=1e-5, rtol=1e-4)
    assert build_text_encoder(TextConfig(kind="umt5", path=str(umt5_dir), max_length=L)) is enc


def test_umt5_bfloat16_returns_float32_close_to_fp32(umt5_dir):
    fp32 = UMT5Encoder(umt5_dir, max_length=L).encode(PROMPTS)
    bf16_enc = UMT5Encoder(umt5_dir, max_length=L, dtype=torch.bfloat16)
    assert next(bf16_enc.model.parameters()).dtype == torch.bfloat16
    bf16 = bf16_enc.encode(PROMPTS)
    assert bf16.dtype == torch.float32
    # Same zero tail (compared per token row: a bf16 entry inside a real row may round to exactly 0).
    assert torch.equal(bf16.norm(dim=-1) == 0, fp32.norm(dim=-1) == 0)
    assert F.cosine_similarity(bf16.flatten(), fp32.flatten(), dim=0) > 0.99


def test_umt5_diffusers_layout(tmp_path, hf_tokenizer):
    save_tiny_umt5(tmp_path / "text_encoder", hf_tokenizer, seed=1)
    hf_tokenizer.save_pretrained(tmp_path / "tokenizer")
    enc = build_text_encoder(TextConfig(kind="umt5", path=str(tmp_path), max_length=8))
    out = enc.encode(["waves"])
    ref = reference_umt5(tmp_path / "text_encoder", hf_tokenizer, ["waves"], 8)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_umt5_missing_path_names_it(tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(FileNotFoundError, match="no_such_checkpoint") as info:
        build_text_encoder(TextConfig(kind="umt5", path=str(missing), max_length=L))
    assert "config.json" in str(info.value)  # says what was expected


def test_umt5_invalid_directories(tmp_path, umt5_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        UMT5Encoder(empty)

    # Wan's own .pth is accepted (tests/unit/test_wan_umt5.py), but only with a tokenizer folder
    weight_file = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    weight_file.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"models_t5_umt5-xxl-enc-bf16.pth.*text\.tokenizer"):
        UMT5Encoder(weight_file)
    other_file = tmp_path / "weights.txt"
    other_file.write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="weights.txt"):
        UMT5Encoder(other_file)

    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(umt5_dir / name, no_tokenizer / name)
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        UMT5Encoder(no_tokenizer)

    wrong_type = tmp_path / "wrong_type"
    shutil.copytree(umt5_dir, wrong_type)
    config = json.loads((wrong_type / "config.json").read_text())
    (wrong_type / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(ValueError, match="model_type 't5'"):
        UMT5Encoder(wrong_type)


# ---------------------------------------------------------------------------------------- build


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(ValueError, match="clip") as info:
        build_text_encoder(TextConfig(kind="clip"))
    assert "minilm" in str(info.value) and "umt5" in str(info.value)


def test_umt5_without_path_is_a_clear_error():
    with pytest.raises(ValueError, match="path"):
        build_text_encoder(TextConfig(kind="umt5", path=None))
