"""Typed configuration of the data stage (defaults here, once; validated with key-naming errors)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import ConfigError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
MISSING_CAPTION = ("skip", "empty")
CROPS = ("center", "random")


@dataclass
class DataConfig:
    """Where shards live and how clips are cut. Resolution and fps come from the `video` section;
    the clip length defaults to the teacher's context (codec.video_frames(stream.context_frames))."""

    shards: str = "outputs/data/shards"  # webdataset video shards (`rollforge data shard --output`)
    latents: str = "outputs/data/latents"  # precomputed latent + text-embedding shards
    prompts: str | None = None  # prompt-only dataset (.txt one per line, or .jsonl with "prompt"/"caption")
    clip_frames: int | None = None  # video frames per clip; None = derived from the stream context
    crop: str = "center"  # center | random
    missing_caption: str = "skip"  # skip | empty
    shard_size: int = 64  # samples per shard
    workers: int = 2  # parallel workers for sharding / precompute
    encode_batch: int = 4  # clips per codec batch in precompute
    shuffle_buffer: int = 64
    batch_size: int = 1
    seed: int = 0

    def validate(self, prefix: str = "data") -> None:
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"{prefix}.{key}: {msg}")

        need(self.crop in CROPS, "crop", f"unknown crop {self.crop!r}; valid: {', '.join(CROPS)}")
        need(self.missing_caption in MISSING_CAPTION, "missing_caption",
             f"unknown policy {self.missing_caption!r}; valid: {', '.join(MISSING_CAPTION)}")
        need(self.clip_frames is None or self.clip_frames > 0, "clip_frames", "must be positive (or null)")
        for key in ("shard_size", "workers", "encode_batch", "batch_size"):
            need(getattr(self, key) > 0, key, "must be positive")
        need(self.shuffle_buffer >= 0, "shuffle_buffer", "must be >= 0")
        need(self.seed >= 0, "seed", "must be >= 0")
