"""DeepSpeed engines for trainable networks; the DeepSpeed config is derived from ours (one source).

Networks never know about parallelism: `build_engine` wraps a plain nn.Module (activation
checkpointing is a flag on the DiT) in a ZeRO stage 0-3 engine with a torch AdamW (DeepSpeed's own
Adam JIT-compiles C++ on first use), gradient accumulation and clipping, bf16 on GPU, fp32 on CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import OptimConfig, TrainConfig
from .lr_schedule import lr_factor


def deepspeed_config(train: TrainConfig, dtype: torch.dtype) -> dict:
    zero: dict = {"stage": train.zero_stage}
    if train.offload_optimizer and train.zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def make_optimizer(params, optim: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                             weight_decay=optim.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig):
    """LambdaLR over `training.lr_schedule.lr_factor`, or None for a constant rate without warmup."""
    if optim.warmup_steps == 0 and optim.decay == "constant":
        return None
    # A plain closure: LambdaLR then checkpoints no schedule, so a resumed run follows the schedule of
    # the config it resumes with (e.g. a constant-rate run resumed into a decay).
    sched = dict(warmup_steps=optim.warmup_steps, decay=optim.decay, decay_start=optim.decay_start,
                 decay_steps=optim.decay_steps, min_lr_ratio=optim.min_lr_ratio)
    return ConfigLR(optimizer, lambda s: lr_factor(s, **sched))


class ConfigLR(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR whose base rates come from the config, never from a checkpoint.

    LambdaLR's state holds `base_lrs` (the optimizer's `initial_lr`), so a plain resume keeps the base
    rate the run started with and silently ignores a changed `lr`. Here a checkpoint restores only the
    step count, and `sync_lr()` (called once the optimizer state is loaded too) sets every group's rate
    for the next step: lr = config lr * lr_factor(step).
    """

    restored = False  # whether a checkpoint held this schedule's state (a constant-rate run's has none)

    def load_state_dict(self, state_dict: dict | None) -> None:
        if state_dict is None:  # saved without a schedule: restore_config_lr sets the step count
            return
        base = list(self.base_lrs)
        super().load_state_dict(state_dict)
        self.base_lrs = base
        self.restored = True
        self.sync_lr()

    def sync_lr(self) -> None:
        for group, base, factor in zip(self.optimizer.param_groups, self.base_lrs, self.lr_lambdas):
            group["initial_lr"] = base
            group["lr"] = base * factor(self.last_epoch)
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]


def restore_config_lr(optimizer, scheduler, optimizer_steps: int) -> None:
    """After a checkpoint load, set the learning rate the config asks for (the checkpoint's groups carry
    the rate they were saved with): the schedule's rate, or the optimizer's constructor `lr` when the
    rate is constant. `optimizer` is a torch optimizer or DeepSpeed's ZeRO wrapper of one;
    `optimizer_steps` (the engine's restored `global_steps`) places a schedule resumed from a run that
    had none, e.g. a constant rate resumed into a decay."""
    if hasattr(scheduler, "sync_lr"):
        if not scheduler.restored:
            scheduler.last_epoch = optimizer_steps
        scheduler.sync_lr()
    elif scheduler is None:
        base = getattr(optimizer, "optimizer", optimizer)
        for group in base.param_groups:
            group["lr"] = base.defaults["lr"]


def build_engine(model: nn.Module, optim: OptimConfig, train: TrainConfig, dtype: torch.dtype):
    """Wrap `model` in a DeepSpeed engine (its optimizer steps every `grad_accum` micro-steps)."""
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, optim)
    scheduler = make_scheduler(optimizer, optim)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(train, dtype))
    return engine


def engine_params_finite(engine) -> bool:
    """Every locally held parameter (partition under ZeRO-3) is finite."""
    for p in engine.module.parameters():
        local = p.ds_tensor if hasattr(p, "ds_tensor") else p.data
        if local.numel() and not torch.isfinite(local).all():
            return False
    return True
