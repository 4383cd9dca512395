"""Per-GPU memory plan of the `distill` stage, in closed form: will a config fit before a long run?

Everything here is arithmetic on the config (no network, no GPU); `rollforge plan` prints it
(infra/cli_plan.py). Notation: P parameters of a role, N = ranks (GPUs), w = bytes of runtime.dtype
(bf16 2, fp32 4), D = model.dim, F = model.ffn_dim, n_L = model.num_layers, B = train.batch_size,
tpf = tokens per latent frame (pipeline.config.tokens_per_frame; Wan 832x480: 1560).

Per GPU, the distill stage holds (training/distill.py, training/objective.py):

* generator (student) and critic: DeepSpeed engines, mixed-precision AdamW, ZeRO stage 0-3
  (`trainable_state`); the generator also keeps its EMA, fp32 and sharded across ranks under every
  ZeRO stage (training/ema.py): 4P/N;
* the frozen teacher in runtime.dtype: wP replicated, or wP/N + one gathered block with
  train.teacher_shard (`frozen_state`);
* the student's rolling KV cache during a rollout (`kv_cache_bytes`);
* activations: the generator step keeps the autograd graph of every *recorded* forward of the
  rollout (the gradient windows, training/rollouts.py) until the DMD loss is backpropagated; the
  critic step backpropagates one bidirectional forward over the context clip
  (`generator_step_activations`, `critic_step_activations`, per block: `block_activation_bytes`).
  The two steps run one after the other, so the peak holds the larger of the two.

Not counted: the text encoder (umT5-XXL, ~10.6 GiB bf16, is kept by the per-process encoder cache
when train.guidance_scale != 1), the CUDA context and NCCL buffers (~1-3 GiB), allocator
fragmentation, and the fp32 build of each network before it is cast or sharded (an init-time peak).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from dataclasses import dataclass

from pipeline.config import ModelConfig, tokens_per_frame
from pipeline.windows import ContextRule, gradient_passes, rolling_pass

GB = 1e9
GiB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# ----------------------------------------------------------------------------------------- parameters
def block_params(m: ModelConfig) -> int:
    """Parameters of one DiTBlock:

        self_attn, cross_attn: 4 (D^2 + D) each (q, k, v, o with bias) + 2D each for norm_q, norm_k (qk_norm)
        norm3 (affine LayerNorm, cross_attn_norm): 2D;  norm1, norm2: none (not affine)
        ffn: D F + F + F D + D;  modulation: 6D
    """
    d, f = m.dim, m.ffn_dim
    attn = 4 * (d * d + d) + (2 * d if m.qk_norm else 0)
    return 2 * attn + (2 * d if m.cross_attn_norm else 0) + (2 * d * f + f + d) + 6 * d


def param_count(m: ModelConfig) -> int:
    """Parameters of a WanDiT with ModelConfig `m` (equal to `sum(p.numel())` of `build_dit(m, "meta")`):

        patch_embedding (Conv3d):       C_in prod(patch) D + D
        text_embedding (2 linears):     text_dim D + D + D^2 + D
        time_embedding (2 linears):     freq_dim D + D + D^2 + D
        time_projection:                6 D^2 + 6D
        n_L blocks:                     n_L block_params(m)
        head (linear + modulation):     D prod(patch) C_out + prod(patch) C_out + 2D

    Wan2.1-T2V-1.3B: 1,418,996,800; Wan2.1-T2V-14B: 14,288,491,584.
    """
    d, p = m.dim, math.prod(m.patch_size)
    embed = m.in_dim * p * d + d + (m.text_dim * d + d + d * d + d) + (m.freq_dim * d + d + d * d + d) + 6 * d * d + 6 * d
    head = d * p * m.out_dim + p * m.out_dim + 2 * d
    return embed + m.num_layers * block_params(m) + head


def largest_layer_params(m: ModelConfig) -> int:
    """The most parameters one module holds directly (DeepSpeed's `largest_layer_params`, which
    ZeRO-3 gathers at once): max of time_projection 6D^2+6D, an FFN linear D F + max(D, F), a
    text/time embedding's first linear, an attention linear D^2 + D, the patch embedding, the head."""
    d, f, p = m.dim, m.ffn_dim, math.prod(m.patch_size)
    return max(6 * d * d + 6 * d, d * f + max(d, f), m.text_dim * d + d, m.freq_dim * d + d, d * d + d,
               m.in_dim * p * d + d, d * p * m.out_dim + p * m.out_dim)


# ----------------------------------------------------------------------------------------- model states
def trainable_state(params: int, largest_layer: int, zero_stage: int, world: int, offload: bool,
                    dtype_bytes: int = 2) -> dict:
    """Bytes per GPU of a DeepSpeed engine's model states: {"params", "grads", "optimizer"}.

    Mixed precision (bf16/fp16, w = 2), the ZeRO paper's accounting, which is what DeepSpeed's
    estimators count (`estimate_zero2_model_states_mem_needs`: GPU 2P + 18P/N, the 18 being
    2 (16-bit grads) + 4 (fp32 grads) + 4 (fp32 master params) + 8 (Adam m and v, fp32);
    `estimate_zero3_model_states_mem_needs`: GPU 4 largest_layer + 18P/N, or with the optimizer
    offloaded 4 largest_layer + 2P/N, the gathered layer's 16-bit params and grads being the 4):

        stage 0: params 2P,            grads (2+4)P,     optimizer (4+8)P      (nothing partitioned)
        stage 1: params 2P,            grads 2P + 4P/N,  optimizer 12P/N       (optimizer states partitioned)
        stage 2: params 2P,            grads 6P/N,       optimizer 12P/N       (= DeepSpeed's ZeRO-2 estimate)
        stage 3: params 2P/N + 4 L_max, grads 4P/N...    the whole 18P/N + 4 L_max (= DeepSpeed's ZeRO-3)
        offload_optimizer (stage >= 1): grads beyond the 16-bit ones and the optimizer move to CPU:
                 stage 1: 2P + 2P; stage 2: 2P (DeepSpeed); stage 3: 2P/N + 4 L_max (DeepSpeed)

    Stage 0 counts DeepSpeed's mixed-precision optimizer unpartitioned (an upper bound: its bf16
    optimizer may partition the fp32 master). fp32 training (w = 4, CPU) has no master copy: params
    4, grads 4, Adam 8 bytes per parameter, partitioned the same way.
    """
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0-3, got {zero_stage}")
    p, n = params, world
    offload = offload and zero_stage > 0  # training/engines.py offloads only under ZeRO >= 1
    if dtype_bytes >= 4:  # fp32: no 16-bit copies, no master params
        full = {"params": 4 * p, "grads": 4 * p, "optimizer": 8 * p}
        shard = {k: v / n for k, v in full.items()}
        if zero_stage == 0:
            out = full
        elif zero_stage == 1:
            out = {"params": full["params"], "grads": full["grads"], "optimizer": shard["optimizer"]}
        elif zero_stage == 2:
            out = {"params": full["params"], "grads": shard["grads"], "optimizer": shard["optimizer"]}
        else:
            out = {"params": shard["params"] + 8 * largest_layer, "grads": shard["grads"], "optimizer": shard["optimizer"]}
        if offload:
            out["optimizer"] = 0
        return {k: int(v) for k, v in out.items()}
    if zero_stage == 0:
        out = {"params": 2 * p, "grads": 6 * p, "optimizer": 12 * p}
    elif zero_stage == 1:
        out = {"params": 2 * p, "grads": 2 * p + (0 if offload else 4 * p / n), "optimizer": 0 if offload else 12 * p / n}
    elif zero_stage == 2:
        out = {"params": 2 * p, "grads": 0 if offload else 6 * p / n, "optimizer": 0 if offload else 12 * p / n}
    else:
        out = {"params": 2 * p / n + 4 * largest_layer, "grads": 0 if offload else 4 * p / n,
               "optimizer": 0 if offload else 12 * p / n}
    return {k: int(v) for k, v in out.items()}


def deepspeed_estimate(params: int, largest_layer: int, zero_stage: int, world: int, offload: bool) -> int | None:
    """GPU bytes per rank from DeepSpeed's own estimators (ZeRO-2 and 3 only; None for 0 and 1).

    Both are pure arithmetic: `estimate_zero2_model_states_mem_needs(total_params, num_gpus_per_node,
    num_nodes, cpu_offload)` and `estimate_zero3_model_states_mem_needs(total_params,
    largest_layer_params, num_gpus_per_node, num_nodes, cpu_offload, cpu_offload_params=False)`
    return (cpu_bytes, gpu_bytes[, largest_layer_bytes]); the GPU part depends on the total GPUs only.
    """
    if zero_stage not in (2, 3):
        return None
    # DeepSpeed's logger writes to stdout (its accelerator warning at import): keep stdout for --json.
    with contextlib.redirect_stdout(sys.stderr):
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        if zero_stage == 2:
            return estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=world, num_nodes=1,
                                                         cpu_offload=offload)[1]
        return estimate_zero3_model_states_mem_needs(params, largest_layer, num_gpus_per_node=world, num_nodes=1,
                                                     cpu_offload=offload, cpu_offload_params=False)[1]


def frozen_state(m: ModelConfig, world: int, shard: bool, dtype_bytes: int) -> int:
    """Bytes per GPU of a frozen network in runtime.dtype: w P replicated; sharded (train.teacher_shard,
    ZeRO-3 without optimizer) w P / N plus one block gathered for its forward (w block_params)."""
    p = param_count(m)
    if not shard or world == 1:
        return dtype_bytes * p
    return math.ceil(dtype_bytes * p / world) + dtype_bytes * block_params(m)


def ema_bytes(params: int, world: int) -> int:
    """The generator's EMA: fp32, one flat partition per rank under every ZeRO stage (training/ema.py):
    4 ceil(P / N) (each tensor padded to a multiple of N, negligible)."""
    return 4 * math.ceil(params / world)


# ----------------------------------------------------------------------------------------- activations
@dataclass(frozen=True)
class Forward:
    """One forward whose autograd graph is kept: q query tokens attending to c context tokens (per sample)."""

    query_tokens: int
    context_tokens: int = 0


def block_activation_bytes(m: ModelConfig, batch: int, fwd: Forward, dtype_bytes: int, checkpointing: bool,
                           attention_copy: bool = False) -> int:
    """Bytes autograd keeps for one DiTBlock over L = B q query tokens with T = B (q + c) keys.

    Without checkpointing (what each op saves for its backward, pipeline/networks/wan_dit.py DiTBlock;
    the residual stream is fp32, the rest in w = runtime.dtype bytes):

        fp32 [L, D]:  block input, norm1 out, q/k RMSNorm fp32 inputs, attention gate input, residual
                      after attention, cross-q RMSNorm input, residual after cross-attention, norm2 out,
                      FFN gate input                                                  -> 40 L D
        w [L, D]:     modulated input, q/k normalised, roped q, attention out, cross q input, its
                      normalised, normed q, cross out, FFN input                      -> 10 w L D
                      (+ 2 w L D when attention runs through SDPA, whose [B, n, L, d] output is
                      copied before the o projection: `attention_copy`; flash-attn saves none)
        w [T, D]:     roped keys and values (the context concatenated with the block's own) -> 2 w T D
        w [L, F]:     FFN hidden before and after GELU                                -> 2 w L F

        a_block = L D (40 + (10 + 2 copy) w) + 2 w T D + 2 w L F

    With activation checkpointing (torch.utils.checkpoint per block) only the block's fp32 input is
    kept: 4 L D (the recompute holds the same context K/V the cache holds; counted there).
    """
    L, T = batch * fwd.query_tokens, batch * (fwd.query_tokens + fwd.context_tokens)
    d, f, w = m.dim, m.ffn_dim, dtype_bytes
    if checkpointing:
        return 4 * L * d
    return L * d * (40 + (10 + 2 * int(attention_copy)) * w) + 2 * w * T * d + 2 * w * L * f


def forward_activation_bytes(m: ModelConfig, batch: int, fwd: Forward, dtype_bytes: int, checkpointing: bool,
                             attention_copy: bool = False) -> int:
    """One forward's graph: n_L blocks, the head, which keeps the last block's output, its norm and
    the modulated input (4 + 4 + w) L D, the patch embedding's input latent w L C_in prod(patch), and
    the output (the head's w and the unpatchified fp32 copy, (w + 4) L C_out prod(patch)); the
    per-frame time modulation, a few frames' worth, is left out:

        a_forward = n_L a_block + (8 + w) L D + L prod(patch) (w C_in + (w + 4) C_out)
    """
    L, p = batch * fwd.query_tokens, math.prod(m.patch_size)
    blocks = m.num_layers * block_activation_bytes(m, batch, fwd, dtype_bytes, checkpointing, attention_copy)
    return blocks + (8 + dtype_bytes) * L * m.dim + L * p * (dtype_bytes * m.in_dim + (dtype_bytes + 4) * m.out_dim)


def text_activation_bytes(m: ModelConfig, batch: int, dtype_bytes: int) -> int:
    """The student's text conditioning computed with gradient (training/distill.py `_rollout`):
    text embedding w L_t (text_dim + 2D), and per layer the cross-attention key's RMSNorm (4 + w) and
    the normed key and value saved by attention (2w): L_t D (4 + 3w) per layer, L_t = B text_len."""
    lt, d, w = batch * m.text_len, m.dim, dtype_bytes
    return w * lt * (m.text_dim + 2 * d) + m.num_layers * lt * d * (4 + 3 * w)


def transient_bytes(m: ModelConfig, batch: int, fwd: Forward, dtype_bytes: int, checkpointing: bool,
                    attention_copy: bool = False) -> int:
    """Memory above the kept graph while the top block is backpropagated: the gradients in flight,
    about three fp32 residual-stream tensors, 12 L D (autograd frees each saved tensor as its op's
    backward runs, so the FFN's and attention's own gradients fit in what they release), plus, when
    checkpointing, the block's recomputed activations (`block_activation_bytes` without it)."""
    L = batch * fwd.query_tokens
    recompute = block_activation_bytes(m, batch, fwd, dtype_bytes, False, attention_copy) if checkpointing else 0
    return 12 * L * m.dim + recompute


def graph_bytes(m: ModelConfig, batch: int, forwards: list[Forward], dtype_bytes: int, checkpointing: bool,
                attention_copy: bool = False, text: bool = True) -> int:
    """Peak activation memory of backpropagating the kept forwards (plus the text branch): the
    graphs of all forwards + the transient of the largest one's block."""
    kept = sum(forward_activation_bytes(m, batch, f, dtype_bytes, checkpointing, attention_copy) for f in forwards)
    if text:
        kept += text_activation_bytes(m, batch, dtype_bytes)
    big = max(forwards, key=lambda f: (f.query_tokens, f.context_tokens))
    return kept + transient_bytes(m, batch, big, dtype_bytes, checkpointing, attention_copy)


def _geometry(cfg) -> tuple[int, ContextRule, int, int]:
    s = cfg.stream
    tpb = s.frames_per_block * tokens_per_frame(cfg.model, cfg.video, cfg.codec)
    return tpb, ContextRule.from_stream(s), s.num_steps, s.context_blocks


def rolling_forwards(cfg, num_blocks: int, offset: int, first: int = 0) -> list[Forward]:
    """The forwards a Rolling Forcing rollout of `num_blocks` blocks (after `first` history blocks)
    records: passes w = offset (mod K) whose window reaches the scored last-context blocks
    (training.rollouts.rolling_grad_passes), each over its window's context (windows.context_for)."""
    tpb, rule, k, score = _geometry(cfg)
    out = []
    for w in gradient_passes(num_blocks, k, offset):
        blocks = rolling_pass(w, num_blocks, k).blocks
        if blocks[-1] >= num_blocks - score:
            out.append(Forward(len(blocks) * tpb, len(rule.window(first + blocks[0], len(blocks))) * tpb))
    return out


def self_forcing_forwards(cfg, num_blocks: int, first: int = 0) -> list[Forward]:
    """The forwards a Self-Forcing rollout records: each scored block's exit-step forward (one block
    over its context), whatever the exit step."""
    tpb, rule, _, score = _geometry(cfg)
    return [Forward(tpb, len(rule.window(first + b, 1)) * tpb) for b in range(num_blocks - score, num_blocks)]


def generator_forwards(cfg, score=None) -> tuple[str, list[Forward]]:
    """The forwards whose graphs the generator step keeps, for the costliest rollout the config draws
    (training/rollouts.py): every length in train.rollout_range, every offset, both kinds are tried
    (`score(forwards)` ranks them; default: tokens x keys). With rollout workers the learner rolls out
    only the scored continuation after a history (rollouts.history_range)."""
    s, tr = cfg.stream, cfg.train
    if cfg.rollouts.workers > 0:
        lo, hi = cfg.rollouts.history_range(tr, s.context_blocks)
        cases = [(h, s.context_blocks) for h in range(lo, hi + 1)]  # (history blocks, blocks rolled out)
    else:
        lo, hi = tr.rollout_range(s.context_blocks)
        cases = [(0, n) for n in range(lo, hi + 1)]
    score = score or (lambda fw: sum(f.query_tokens * (2 * f.query_tokens + f.context_tokens) for f in fw))
    candidates = []
    for first, n in cases:
        for offset in range(s.num_steps):
            candidates.append((f"rolling, {first + n} blocks, offset {offset}", rolling_forwards(cfg, n, offset, first)))
        candidates.append((f"self-forcing, {first + n} blocks", self_forcing_forwards(cfg, n, first)))
    return max(candidates, key=lambda c: score(c[1]))


def kv_cache_bytes(cfg, m: ModelConfig | None = None, dtype_bytes: int | None = None) -> int:
    """The student's rolling KV cache (pipeline/kv_cache.py), full: sink_blocks + cache_recent entries,
    each K and V [n_L, B, fpb tpf, n, d] plus the clean latent [B, fpb, C, H, W], in runtime.dtype:

        (S + R) B fpb (2 n_L tpf D + C H W) w
    """
    m = m or cfg.model
    w = dtype_bytes or DTYPE_BYTES[cfg.runtime.dtype]
    s, b = cfg.stream, cfg.train.batch_size
    rule = ContextRule.from_stream(s)
    entries = s.sink_blocks + rule.cache_recent
    tpf = tokens_per_frame(cfg.model, cfg.video, cfg.codec)
    h, wd = cfg.video.height // cfg.codec.spatial_factor, cfg.video.width // cfg.codec.spatial_factor
    per_entry = b * s.frames_per_block * (2 * m.num_layers * tpf * m.dim + cfg.codec.latent_channels * h * wd) * w
    return entries * per_entry


def uses_attention_copy(cfg) -> bool:
    """Whether attention runs through SDPA (CPU, fp32, or runtime.attention=sdpa) rather than flash-attn."""
    rt = cfg.runtime
    return rt.device == "cpu" or rt.dtype == "float32" or rt.attention == "sdpa"


# ----------------------------------------------------------------------------------------- the plan
KNOBS = ("zero_stage", "offload_optimizer", "teacher_shard", "activation_checkpointing", "batch_size")


def plan(cfg, gpus: int, gpu_mem: float, roles: dict[str, ModelConfig] | None = None,
         with_advice: bool = True) -> dict:
    """The per-GPU plan of `cfg`'s distill stage on `gpus` GPUs of `gpu_mem` bytes (see module doc);
    when it does not fit (and `with_advice`), "advice" lists the train.* changes that make it fit."""
    from training.roles import check_roles

    roles = roles or check_roles(cfg)
    tr, w = cfg.train, DTYPE_BYTES[cfg.runtime.dtype]
    ckpt, copy = tr.activation_checkpointing, uses_attention_copy(cfg)
    student, critic, teacher = roles["student"], roles["critic"], roles["teacher"]
    out_roles: dict[str, dict] = {}
    for name, m in (("student", student), ("critic", critic)):
        p, big = param_count(m), largest_layer_params(m)
        state = trainable_state(p, big, tr.zero_stage, gpus, tr.offload_optimizer, w)
        out_roles[name] = {"params": p, "param_bytes": state["params"], "grad_bytes": state["grads"],
                           "optimizer_bytes": state["optimizer"],
                           "deepspeed_estimate": deepspeed_estimate(p, big, tr.zero_stage, gpus, tr.offload_optimizer)
                           if w == 2 else None}
    out_roles["student"]["ema_bytes"] = ema_bytes(out_roles["student"]["params"], gpus)
    out_roles["teacher"] = {"params": param_count(teacher),
                            "param_bytes": frozen_state(teacher, gpus, tr.teacher_shard, w),
                            "sharded": bool(tr.teacher_shard and gpus > 1)}

    b = tr.batch_size
    label, gen_fwds = generator_forwards(cfg, lambda f: graph_bytes(student, b, f, w, ckpt, copy))
    tpf = tokens_per_frame(cfg.model, cfg.video, cfg.codec)
    clip = [Forward(cfg.stream.context_frames * tpf)]
    gen_act = {c: graph_bytes(student, b, gen_fwds, w, c, copy) for c in (False, True)}
    crit_act = {c: graph_bytes(critic, b, clip, w, c, copy, text=False) for c in (False, True)}
    # One full gradient window (K blocks over its full-window context), for reference.
    s = cfg.stream
    tpb = s.frames_per_block * tpf
    window = Forward(s.window_blocks * tpb, len(ContextRule.from_stream(s).window(s.context_blocks, s.window_blocks)) * tpb)
    win_act = {c: graph_bytes(student, b, [window], w, c, copy) for c in (False, True)}
    kv = kv_cache_bytes(cfg, student, w)
    out_roles["student"].update({"activation_bytes": gen_act[ckpt], "kv_cache_bytes": kv})
    out_roles["critic"]["activation_bytes"] = crit_act[ckpt]
    static = {r: sum(v for k, v in d.items() if k.endswith("_bytes") and k not in ("activation_bytes", "kv_cache_bytes"))
              for r, d in out_roles.items()}
    dynamic = {"generator_step": gen_act[ckpt] + kv, "critic_step": crit_act[ckpt]}
    for r in out_roles:
        out_roles[r]["static_bytes"] = static[r]
    total = sum(static.values()) + max(dynamic.values())
    result = {
        "gpus": gpus,
        "gpu_mem": int(gpu_mem),
        "dtype": cfg.runtime.dtype,
        "settings": {"zero_stage": tr.zero_stage, "offload_optimizer": tr.offload_optimizer,
                     "teacher_shard": tr.teacher_shard, "activation_checkpointing": ckpt, "batch_size": b},
        "roles": out_roles,
        "activations": {
            "generator_rollout": label,
            "generator_forwards": [dataclasses.asdict(f) for f in gen_fwds],
            "generator_step": {"checkpointing": gen_act[True], "no_checkpointing": gen_act[False]},
            "critic_step": {"checkpointing": crit_act[True], "no_checkpointing": crit_act[False]},
            "one_window": {"checkpointing": win_act[True], "no_checkpointing": win_act[False],
                           "query_tokens": b * window.query_tokens, "context_tokens": b * window.context_tokens},
            "peak_step": max(dynamic, key=dynamic.get),
        },
        "static": sum(static.values()),
        "dynamic": max(dynamic.values()),
        "total": int(total),
        "fits": bool(total <= gpu_mem),
    }
    if with_advice and not result["fits"]:
        result["advice"] = advise(cfg, gpus, gpu_mem, roles)
    return result


def _changes(tr) -> list[dict]:
    """Single setting changes that lower memory, from the current train.* values."""
    out = []
    if tr.zero_stage < 3:
        out.append({"train.zero_stage": 3})
    if not tr.offload_optimizer:
        out.append({"train.offload_optimizer": True} if tr.zero_stage > 0 else
                   {"train.zero_stage": 2, "train.offload_optimizer": True})
    if not tr.teacher_shard:
        out.append({"train.teacher_shard": True})
    if not tr.activation_checkpointing:
        out.append({"train.activation_checkpointing": True})
    if tr.batch_size > 1:
        out.append({"train.batch_size": max(1, tr.batch_size // 2)})
        out.append({"train.batch_size": 1, "train.grad_accum": tr.grad_accum * tr.batch_size})
    return out


def with_changes(cfg, change: dict):
    """A copy of cfg with {"train.key": value} applied."""
    train = dataclasses.replace(cfg.train, **{k.split(".", 1)[1]: v for k, v in change.items()})
    return dataclasses.replace(cfg, train=train)


def advise(cfg, gpus: int, gpu_mem: float, roles: dict | None = None) -> list[dict]:
    """Re-run the plan with each single change (and then all of them together) and list those that
    fit: [{"set": {"train.key": value, ...}, "total": bytes}], smallest change first."""
    singles = _changes(cfg.train)
    out = []
    for change in singles:
        p = plan(with_changes(cfg, change), gpus, gpu_mem, roles, with_advice=False)
        if p["fits"]:
            out.append({"set": change, "total": p["total"]})
    if not out and singles:
        # Nothing alone: add the changes in order until it fits.
        merged: dict = {}
        for change in singles:
            merged.update(change)
            p = plan(with_changes(cfg, merged), gpus, gpu_mem, roles, with_advice=False)
            if p["fits"]:
                out.append({"set": dict(merged), "total": p["total"]})
                break
    if not out:
        out.append({"set": {}, "total": None,
                    "note": "no train.* setting fits; use more GPUs (--gpus) or GPUs with more memory"})
    return out
