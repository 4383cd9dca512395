"""Prompt-only datasets with the real all-MiniLM-L6-v2 encoder (max_length 32)."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from data.prompts import (
    EMBEDDINGS_FILE,
    MANIFEST_FILE,
    TEXTS_FILE,
    PromptDataset,
    embed_prompts,
    prompts_sha256,
    read_prompts,
)
from pipeline.config import TextConfig
from pipeline.networks.text_encoders import build_text_encoder

PROMPTS = ["a red circle bouncing on a black background", "waves", "a timelapse of clouds over a lake at dusk",
           "a cyclist rides past parked cars", "# not a comment inside a list", "fireworks"]
FILES = (EMBEDDINGS_FILE, TEXTS_FILE, MANIFEST_FILE)
OLD_NS = 1_000_000_000


@pytest.fixture(scope="module")
def encoder():
    return build_text_encoder(TextConfig(kind="minilm", max_length=32))


@pytest.fixture(scope="module")
def embedded(encoder, tmp_path_factory):
    return embed_prompts(PROMPTS, encoder, tmp_path_factory.mktemp("prompts"), batch_size=4)


def test_read_txt_skips_blanks_and_comments(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# header comment\na red fox\n\n   \n  waves crash  \n#another\nsnow # keeps the hash\n")
    prompts, counts = read_prompts(path)
    assert prompts == ["a red fox", "waves crash", "snow # keeps the hash"]
    assert counts == {"prompts": 3, "blank": 2, "comments": 2, "bad": 0}


def test_read_jsonl_fields_and_bad_lines(tmp_path):
    lines = [json.dumps({"prompt": "a red fox"}), json.dumps({"caption": "a blue car"}),
             json.dumps({"text": "rain", "id": 3}), "{not json", json.dumps(["a", "list"]),
             json.dumps({"other": "field"}), json.dumps({"prompt": "  ", "caption": "fallback"}),
             json.dumps({"prompt": 5}), "", json.dumps({"prompt": "ünïcode ☂"}, ensure_ascii=False)]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prompts, counts = read_prompts(path)
    assert prompts == ["a red fox", "a blue car", "rain", "fallback", "ünïcode ☂"]
    assert counts == {"prompts": 5, "blank": 1, "comments": 0, "bad": 4}
    with pytest.raises(ValueError, match="jsonl"):
        read_prompts(tmp_path / "p.parquet")


def test_read_csv_prompt_column_or_first(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('id,caption\n1,"a red fox, running"\n2,\n3,rain\n', encoding="utf-8")
    prompts, counts = read_prompts(path)
    assert prompts == ["a red fox, running", "rain"] and counts["blank"] == 1
    path.write_text("words\nsnow\n", encoding="utf-8")
    assert read_prompts(path)[0] == ["snow"]


def test_embeddings_match_the_encoder(embedded, encoder):
    assert sorted(p.name for p in embedded.iterdir()) == sorted(FILES)  # no temporary files left
    ds = PromptDataset(embedded)
    assert len(ds) == len(PROMPTS) and ds.prompts == PROMPTS
    assert (ds.max_length, ds.hidden_dim) == (32, 384)
    direct = encoder.encode(PROMPTS)  # [N, 32, 384]
    true_len = [min(len(encoder.tokenizer(p)["input_ids"]), 32) for p in PROMPTS]
    assert ds.lengths.tolist() == true_len and ds.lengths.dtype == torch.int64
    for i, prompt in enumerate(PROMPTS):
        text, emb = ds[i]
        assert text == prompt and emb.shape == (32, 384) and emb.dtype == torch.float32
        torch.testing.assert_close(emb, direct[i], rtol=1e-5, atol=1e-5)  # batching does not matter
        assert torch.all(emb[true_len[i]:] == 0) and torch.all(emb[: true_len[i]].norm(dim=-1) > 0)
    assert ds[-1][0] == PROMPTS[-1]
    with pytest.raises(IndexError):
        ds[len(PROMPTS)]
    rows = [json.loads(line) for line in (embedded / TEXTS_FILE).read_text().splitlines()]
    assert rows == [{"index": i, "prompt": p} for i, p in enumerate(PROMPTS)]
    manifest = json.loads((embedded / MANIFEST_FILE).read_text())
    assert manifest["encoder"] == {"kind": "minilm", "path": None, "hidden_dim": 384, "max_length": 32}
    assert manifest["count"] == len(PROMPTS) and manifest["dtype"] == "float32"
    assert manifest["prompts_sha256"] == prompts_sha256(PROMPTS)


def _age(directory):
    for name in FILES:
        os.utime(directory / name, ns=(OLD_NS, OLD_NS))


def _mtimes(directory):
    return {name: (directory / name).stat().st_mtime_ns for name in FILES}


def test_rerun_is_a_no_op_and_changes_rewrite(encoder, tmp_path):
    out = embed_prompts(PROMPTS[:3], encoder, tmp_path, batch_size=2)
    _age(out)
    assert embed_prompts(PROMPTS[:3], encoder, tmp_path, batch_size=3) == out
    assert _mtimes(out) == dict.fromkeys(FILES, OLD_NS), "same prompts + encoder must not rewrite"

    embed_prompts(PROMPTS[:3][::-1], encoder, tmp_path)  # same texts, other order: different dataset
    assert all(t != OLD_NS for t in _mtimes(out).values())
    assert PromptDataset(out).prompts == PROMPTS[:3][::-1]

    _age(out)
    embed_prompts(PROMPTS[:3][::-1], build_text_encoder(TextConfig(max_length=16)), tmp_path)
    assert all(t != OLD_NS for t in _mtimes(out).values()), "another encoder config must rewrite"
    ds = PromptDataset(out)
    assert ds.max_length == 16 and ds[0][1].shape == (16, 384)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)


def test_bfloat16_option(encoder, tmp_path):
    out = embed_prompts(PROMPTS[:2], encoder, tmp_path, dtype="bf16")
    ds = PromptDataset(out)
    assert json.loads((out / MANIFEST_FILE).read_text())["dtype"] == "bfloat16"
    emb = ds[0][1]
    assert emb.dtype == torch.bfloat16
    torch.testing.assert_close(emb.float(), encoder.encode(PROMPTS[:1])[0], rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="dtype"):
        embed_prompts(PROMPTS[:2], encoder, tmp_path, dtype="int8")


def test_order_is_a_seeded_permutation_per_epoch(embedded):
    ds = PromptDataset(embedded, seed=7)
    n = len(ds)
    orders = [ds.order(e) for e in range(6)]
    assert all(sorted(o) == list(range(n)) for o in orders)
    assert orders[0] == ds.order(0, seed=7) == PromptDataset(embedded, seed=7).order(0)
    assert len({tuple(o) for o in orders}) > 1, "epochs must reshuffle"
    assert [ds.order(e, seed=8) for e in range(6)] != orders
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers get a pickled copy
    assert clone[2][0] == ds[2][0] and torch.equal(clone[2][1], ds[2][1])


def test_inconsistent_directory_is_rejected(embedded, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in FILES:
        (broken / name).write_bytes((embedded / name).read_bytes())
    (broken / TEXTS_FILE).write_text(json.dumps({"index": 0, "prompt": "something else"}) + "\n")
    with pytest.raises(ValueError, match="disagree"):
        PromptDataset(broken)
    (broken / MANIFEST_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="embed_prompts"):
        PromptDataset(broken)


# ------------------------------------------------------------------ prompt-only training data
def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_prompt_loader_shards_ranks_reshuffles_epochs_and_resumes_exactly(embedded):
    from data.prompt_set import PromptLoader

    ranks = [PromptLoader(embedded, r, 2, seed=3, batch_size=1) for r in (0, 1)]
    epoch0 = [[b["caption"][0] for b in _take(lo, 3)] for lo in ranks]
    assert sorted(epoch0[0] + epoch0[1]) == sorted(PROMPTS)  # disjoint, together every prompt once
    epoch1 = [b["caption"][0] for b in _take(ranks[0], 3)]
    assert ranks[0].epoch == 1 and epoch1 != epoch0[0]  # a new order each epoch
    # resume: a loader restored from a state continues with exactly the same batches
    a = PromptLoader(embedded, 0, 1, seed=5, batch_size=4)
    _take(a, 3)
    state = json.loads(json.dumps(a.state_dict()))
    rest = _take(a, 4)
    b = PromptLoader(embedded, 0, 1, seed=5, batch_size=4)
    b.load_state_dict(state)
    again = _take(b, 4)
    assert [x["caption"] for x in rest] == [x["caption"] for x in again]
    assert all(torch.equal(x["text"], y["text"]) for x, y in zip(rest, again))
    assert rest[0]["text"].shape[1:] == (32, 384) and rest[0]["text"].dtype == torch.float32
    with pytest.raises(ValueError, match="seed"):
        PromptLoader(embedded, 0, 1, seed=6).load_state_dict(state)


def test_prompt_source_embeds_a_file_once_and_checks_a_directory(embedded, tmp_path):
    from data.prompt_set import embed_prompt_source
    from pipeline.config import ConfigError

    path = tmp_path / "p.csv"
    path.write_text("prompt\n" + "\n".join(f'"{p}"' for p in PROMPTS) + "\n")
    out = embed_prompt_source(path, TextConfig(kind="minilm", max_length=32), tmp_path / "cache")
    assert out == tmp_path / "cache/p" and PromptDataset(out).prompts == PROMPTS
    stamp = (out / EMBEDDINGS_FILE).stat().st_mtime_ns
    embed_prompt_source(path, TextConfig(kind="minilm", max_length=32), tmp_path / "cache")
    assert (out / EMBEDDINGS_FILE).stat().st_mtime_ns == stamp  # not embedded twice
    assert embed_prompt_source(embedded, TextConfig(kind="minilm", max_length=32), None) == embedded
    with pytest.raises(ConfigError, match="max_length"):
        embed_prompt_source(embedded, TextConfig(kind="minilm", max_length=16), None)
