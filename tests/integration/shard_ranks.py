"""One rank of the sharded-teacher check (tests/integration/test_prompt_only.py starts two).

Prints one JSON line: the parameter values this rank holds, the teacher's total, and the largest
difference between the sharded teacher's outputs and the unsharded one's on the same inputs.
"""

import json
import sys

import torch

from infra.config import load_config
from infra.schema import Config
from pipeline.networks.wan_dit import build_dit
from training.dist import init_distributed
from training.teacher_shard import local_numel, shard_frozen

config, *overrides = sys.argv[1:]
rank, world = init_distributed(torch.device("cpu"))
cfg = load_config(Config, config, overrides)
full = build_dit(cfg.model, seed=0, zero_head=False).eval().requires_grad_(False)
total = sum(p.numel() for p in full.parameters())
sharded = shard_frozen(build_dit(cfg.model, seed=0, zero_head=False), cfg.train, torch.float32)
g = torch.Generator().manual_seed(rank)  # different inputs per rank: the gathers must not mix them up
x = torch.randn(1, 6, cfg.model.in_dim, 8, 8, generator=g)
text = torch.randn(1, cfg.model.text_len, cfg.model.text_dim, generator=g)
t = torch.tensor([float(300 + 400 * rank)])
with torch.no_grad():
    diff = (full(x, t, full.encode_text(text)) - sharded(x, t, sharded.encode_text(text))).abs().max().item()
print(json.dumps({"rank": rank, "local": local_numel(sharded), "total": total, "max_diff": diff}), flush=True)
