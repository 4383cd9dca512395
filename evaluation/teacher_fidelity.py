"""Is a teacher good enough to distil? Its denoising error by noise level, and whether its samples
look like its data.

A student distilled from a teacher can only be as good as the teacher's samples, and a teacher can
denoise well (low flow-matching loss) while its samples from pure noise are still incoherent: the
loss is dominated by low-noise levels where denoising is easy, while sampling depends on the
high-noise levels where the teacher must decide the layout. So both are measured:

* denoising, per noise level sigma, on clips of the training latents x0 [1, F, C, h, w] with a
  seeded eps:  x_t = (1 - sigma) x0 + sigma eps,  v_hat = teacher(x_t, sigma T, caption),
  x0_hat = x_t - sigma v_hat;
      x0_mse        = mean (x0_hat - x0)^2
      x0_rel_error  = x0_mse / var(x0)      (1.0 = no better than predicting the clip's mean value)
      v_mse         = mean (v_hat - (eps - x0))^2   (the training loss at that level)
* sample statistics: the teacher's clip for each caption against the data clip, decoded to uint8,
  in grey levels (0..255, mean over RGB):
      temporal_diff  = mean |frame[i] - frame[i-1]|            (motion + flicker)
      spatial_diff   = mean |pixel - right/lower neighbour|    (edges + texture + noise)
  Solid objects moving on flat backgrounds (the procedural world) give small values for both;
  residual noise and texture raise them. `sample_over_data` is the ratio per statistic.
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path

import numpy as np
import torch

from .drift import as_frames, consecutive_mae

DEFAULT_SIGMAS = (0.1, 0.3, 0.6, 0.9, 1.0)


def frame_stats(frames: np.ndarray) -> dict:
    """uint8 frames [n, H, W, 3] -> {temporal_diff, spatial_diff} in grey levels (see module doc)."""
    frames = as_frames(frames)
    x = frames.astype(np.float64)
    temporal = float(consecutive_mae(frames).mean()) if len(frames) > 1 else 0.0
    spatial = float((np.abs(np.diff(x, axis=1)).mean() + np.abs(np.diff(x, axis=2)).mean()) / 2)
    return {"temporal_diff": temporal, "spatial_diff": spatial}


@torch.no_grad()
def denoising_errors(model, x0: torch.Tensor, text, sigmas, generator: torch.Generator,
                     num_train_timesteps: int = 1000) -> dict[float, dict]:
    """{sigma: {x0_mse, x0_rel_error, v_mse}} for one clip x0 [B, F, C, h, w] (module doc)."""
    from pipeline.schedule import add_noise, flow_to_x0

    x0 = x0.float()
    var = float(x0.var())
    param = next(model.parameters())
    out = {}
    for sigma in sigmas:
        if not 0 < sigma <= 1:
            raise ValueError(f"noise levels must be in (0, 1], got {sigma}")
        eps = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
        t = sigma * num_train_timesteps
        x_t = add_noise(x0, eps, t, num_train_timesteps)
        flow = model(x_t.to(param.dtype), torch.full((x0.shape[0],), t, device=x0.device), text).float()
        x0_hat = flow_to_x0(flow, x_t, t, num_train_timesteps)
        mse = float(((x0_hat - x0) ** 2).mean())
        out[float(sigma)] = {"x0_mse": mse, "x0_rel_error": mse / var if var > 0 else float("inf"),
                             "v_mse": float(((flow - (eps - x0)) ** 2).mean())}
    return out


def data_clips(latents_dir: str | Path, count: int) -> list[dict]:
    """The first `count` clips of the latent shards in file order: [{latent [F, C, h, w], caption}]."""
    import webdataset as wds

    from data.loader import latent_decoder, latent_urls

    decode = latent_decoder()
    shards = wds.WebDataset(latent_urls(latents_dir), shardshuffle=False, empty_check=False)
    samples = itertools.islice(shards, count)
    return [{"latent": s["latent"], "caption": s["caption"]} for s in map(decode, samples)]


def teacher_fidelity(cfg, checkpoint: str | Path | None, latents_dir: str | Path, clips: int = 8,
                     sigmas=DEFAULT_SIGMAS) -> dict:
    """Denoising errors (mean over `clips` data clips) and sample-vs-data statistics of the
    bidirectional teacher at `checkpoint` (None: seeded random weights), sampled with cfg.sampler (steps, guidance) from seed
    cfg.runtime.seed. Clips are cut to the teacher's context (stream.context_frames)."""
    from pipeline.generator import PromptSchedule, StreamingGenerator
    from pipeline.video_io import to_uint8_frames

    gen = StreamingGenerator(cfg, checkpoint=checkpoint)
    s = cfg.stream
    data = data_clips(latents_dir, clips)
    if not data:
        raise ValueError(f"{latents_dir}: the shards hold no clips")
    rng = torch.Generator().manual_seed(cfg.runtime.seed)
    per_sigma: dict[float, list[dict]] = {float(sig): [] for sig in sigmas}
    data_stats, sample_stats, clip_frames = [], [], []
    for clip in data:
        x0 = clip["latent"][None, :s.context_frames].to(gen.device)
        clip_frames.append(int(x0.shape[1]))
        text = gen.text_cond(clip["caption"])
        for sig, err in denoising_errors(gen.model, x0, text, sigmas, rng, s.num_train_timesteps).items():
            per_sigma[sig].append(err)
        data_stats.append(frame_stats(to_uint8_frames(gen.codec.decode(x0.to(gen.dtype)))))
        blocks = x0.shape[1] // s.frames_per_block
        sample = np.concatenate(list(gen.stream_video(PromptSchedule.single(clip["caption"]), blocks,
                                                      "bidirectional")))
        sample_stats.append(frame_stats(sample))

    def mean(rows: list[dict]) -> dict:
        return {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}

    d, smp = mean(data_stats), mean(sample_stats)
    return {
        "clips": len(data), "clip_latent_frames": clip_frames[0],
        "denoising": {str(sig): mean(rows) for sig, rows in per_sigma.items()},
        "data": d, "samples": smp,
        "sample_over_data": {k: smp[k] / d[k] if d[k] > 0 else None for k in d},
        "sampler": {"teacher_steps": cfg.sampler.teacher_steps, "guidance_scale": cfg.sampler.guidance_scale,
                    "shift": s.shift, "seed": cfg.runtime.seed},
    }
