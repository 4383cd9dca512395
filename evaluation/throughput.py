"""Stream throughput measurement: fps, first-frame latency, peak memory, KV-cache size.

Timing covers sampling *and* streaming decode (what a viewer waits for); model construction and
text-encoder loading happen before the clock starts.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Callable

import torch

from pipeline.generator import PromptSchedule, StreamingGenerator


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def machine_info() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(cfg, checkpoint, samplers: list[str]) -> float:
    """Stream a few blocks with each sampler, untimed, so that the first timed stream of a bench
    does not carry the process's one-time costs (thread pools, first kernels): without it the first
    prompt of the first model measured ~5x slower than the others. Returns the seconds spent."""
    start = time.perf_counter()
    gen = StreamingGenerator(cfg, checkpoint=checkpoint)
    for sampler in samplers:
        for _ in gen.stream_video(PromptSchedule.single("warm-up"), cfg.stream.window_blocks + 2, sampler):
            pass
    return time.perf_counter() - start


def measure_stream(gen: StreamingGenerator, prompt: str, seconds: float, sampler: str | None = None,
                   recompute: bool = False, on_frames: Callable[[int], None] | None = None) -> dict:
    """Stream `seconds` of video once and report the numbers `rollforge bench stream` prints."""
    sampler = sampler or gen.cfg.sampler.kind
    num_blocks = gen.blocks_for_seconds(seconds)
    if gen.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(gen.device)
    gen.text_cond(prompt)  # encode once outside the clock
    backends: list = []
    frames = 0
    first = None
    _sync(gen.device)
    start = time.perf_counter()
    for chunk in gen.stream_video(PromptSchedule.single(prompt), num_blocks, sampler, recompute=recompute,
                                  backend_out=backends):
        _sync(gen.device)
        if first is None:
            first = time.perf_counter() - start
        frames += len(chunk)
        if on_frames is not None:
            on_frames(len(chunk))
    wall = time.perf_counter() - start
    latent_frames = num_blocks * gen.cfg.stream.frames_per_block
    backend = backends[0] if backends else None
    if backend is None:
        cache_bytes = 0
    elif hasattr(backend, "cache"):
        cache_bytes = backend.cache.nbytes()
    else:  # the recompute reference holds every clean latent instead of a cache
        cache_bytes = sum(t.numel() * t.element_size() for t in backend.clean)
    out = {
        "sampler": sampler,
        "recompute": recompute,
        "latent_frames": latent_frames,
        "video_frames": frames,
        "video_seconds": frames / gen.cfg.video.fps,
        "wall_s": wall,
        "fps": frames / wall if wall > 0 else float("inf"),
        "first_frame_latency_s": first,
        "peak_rss_bytes": peak_rss_bytes(),
        "kv_cache_bytes": cache_bytes,
        "device": str(gen.device),
        "dtype": gen.cfg.runtime.dtype,
    }
    if gen.device.type == "cuda":
        out["peak_cuda_bytes"] = torch.cuda.max_memory_allocated(gen.device)
    return out
