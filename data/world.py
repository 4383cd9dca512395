"""A procedural world: coloured shapes bouncing in a box, with captions and exact ground truth.

It is the tiny teacher's training data, and its ground truth makes long-horizon drift measurable:
every object keeps its colour, size and count for the whole video, and its position at frame `i`
is known in closed form.

Dynamics. Each shape's *centre* moves at constant velocity `v` (px/s) inside the box
`[r, W - r] x [r, H - r]` (`r = size / 2`) and reflects elastically off the walls. The position at
time `t = i / fps` is the unfolded straight-line motion folded back into the box (a triangle wave),
so positions are exact and do not accumulate integration error:

    u = (p0 - lo + v t) mod 2L,   p(t) = lo + (u if u <= L else 2L - u),   L = hi - lo.

Drawing. Pixel `(row y, column x)` is tested at its centre `(x + 0.5, y + 0.5)`; shapes are drawn
in list order (later shapes on top) with hard edges (no anti-aliasing). `size` is the side of the
shape's bounding box: the diameter of a circle, the side of a square, the base and height of an
upward triangle.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

KINDS = ("circle", "square", "triangle")

# Saturated, mutually distant colours: they survive yuv420p chroma subsampling and stay nameable.
SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (40, 200, 60),
    "blue": (40, 80, 235),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "cyan": (40, 220, 230),
    "magenta": (220, 50, 210),
    "orange": (245, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "gray": (110, 110, 110),
    "dark blue": (15, 20, 70),
}


@dataclass(frozen=True)
class WorldVocab:
    """What a world may contain. Captions name every property the world checks test (colour, size,
    count), so a perfect generator can pass them from the prompt alone: sizes are discrete and named,
    or there is one size and its name is "" (the caption then names none). The motion check tests only
    what "bouncing" and the vocabulary say together: a speed within `speed` (ground truths carry it).

    `sizes` maps a size name to the bounding-box side as a fraction of the frame's short side;
    `speed` is the (min, max) per-axis speed in short sides per second; `max_shapes` objects at most.
    """

    colours: tuple[str, ...]
    backgrounds: tuple[str, ...]
    kinds: tuple[str, ...]
    sizes: tuple[tuple[str, float], ...]
    max_shapes: int
    speed: tuple[float, float]

    def __post_init__(self) -> None:
        for c in self.colours:
            if c not in SHAPE_COLOURS:
                raise ValueError(f"unknown colour {c!r}; valid: {', '.join(SHAPE_COLOURS)}")
        for b in self.backgrounds:
            if b not in BACKGROUNDS:
                raise ValueError(f"unknown background {b!r}; valid: {', '.join(BACKGROUNDS)}")
        for k in self.kinds:
            if k not in KINDS:
                raise ValueError(f"unknown shape kind {k!r}; valid: {', '.join(KINDS)}")
        if not self.sizes or any(not 0 < f <= 1 for _, f in self.sizes):
            raise ValueError(f"sizes must be (name, fraction in (0, 1]) pairs, got {self.sizes}")
        if self.max_shapes < 1:
            raise ValueError(f"max_shapes must be >= 1, got {self.max_shapes}")
        if not 0 <= self.speed[0] <= self.speed[1]:
            raise ValueError(f"speed must be (min, max) with 0 <= min <= max, got {self.speed}")


# "full": every colour, background and kind, up to 3 objects of 3 sizes (a hard world).
# "laptop": what a tiny teacher learns in hours on 2 CPU cores (world teacher v2): one object, 4 colours
# far apart, 2 backgrounds, 2 kinds, 2 sizes, slow. On 32 px frames: 8 px and 14 px objects.
# "laptop_big": "laptop" with objects of 12 px and 18 px on 32 px frames: the shipped world teacher's
# (configs/world_teacher.yaml). Under the pixel codec's factor 4 and 2x2 patches a token covers 8x8 px, so
# even the small object spans several tokens (an 8 px one is one token's area, which a causal student
# loses over a long stream: docs/BENCHMARKS.md, "make demo").
# "laptop_one": "laptop_big" with one size (18 px, named by no caption word). A tiny teacher's size
# conditioning is loose (one caption's clips range from 0.65 to 1.0 of a small object's area), and a
# stream must keep its first chunk's size; the fairness rule allows fixing sizes (teacher v5).
WORLD_VOCABS: dict[str, WorldVocab] = {
    "full": WorldVocab(colours=tuple(sorted(SHAPE_COLOURS)), backgrounds=tuple(sorted(BACKGROUNDS)), kinds=KINDS,
                       sizes=(("small", 0.16), ("medium", 0.23), ("large", 0.30)), max_shapes=3,
                       speed=(0.15, 0.50)),
    "laptop": WorldVocab(colours=("blue", "green", "red", "yellow"), backgrounds=("black", "gray"),
                         kinds=("circle", "square"), sizes=(("small", 0.25), ("large", 0.44)), max_shapes=1,
                         speed=(0.10, 0.25)),
    "laptop_big": WorldVocab(colours=("blue", "green", "red", "yellow"), backgrounds=("black", "gray"),
                             kinds=("circle", "square"), sizes=(("small", 0.375), ("large", 0.5625)),
                             max_shapes=1, speed=(0.10, 0.25)),
    "laptop_one": WorldVocab(colours=("blue", "green", "red", "yellow"), backgrounds=("black", "gray"),
                             kinds=("circle", "square"), sizes=(("", 0.5625),), max_shapes=1,
                             speed=(0.10, 0.25)),
}


# Every vocabulary's per-axis speed range together: what "bouncing" promises when the vocabulary is unknown
# (a ground truth written without one).
ANY_SPEED: tuple[float, float] = (min(v.speed[0] for v in WORLD_VOCABS.values()),
                                  max(v.speed[1] for v in WORLD_VOCABS.values()))


def world_vocab(name: str) -> WorldVocab:
    if name not in WORLD_VOCABS:
        raise ValueError(f"unknown world vocabulary {name!r}; valid: {', '.join(WORLD_VOCABS)}")
    return WORLD_VOCABS[name]


@dataclass
class ShapeSpec:
    """One object: `kind` in KINDS, colour `colour`/`rgb`, bounding-box side `size` (px), centre
    `position` (x, y) at t = 0, `velocity` (vx, vy) in px/s and the size's caption word `size_name`
    (None: the caption names no size)."""

    kind: str
    colour: str
    rgb: tuple[int, int, int]
    size: int
    position: tuple[float, float]
    velocity: tuple[float, float]
    size_name: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown shape kind {self.kind!r}; valid: {', '.join(KINDS)}")
        if self.size <= 0:
            raise ValueError(f"shape size must be positive, got {self.size}")


@dataclass
class WorldSpec:
    """A whole video: background, shapes (drawn in order), fps, duration (s), frame size, seed."""

    background: str
    background_rgb: tuple[int, int, int]
    shapes: list[ShapeSpec] = field(default_factory=list)
    fps: int = 16
    duration: float = 4.0
    width: int = 64
    height: int = 64
    seed: int | None = None

    @property
    def num_frames(self) -> int:
        return int(round(self.duration * self.fps))

    def __post_init__(self) -> None:
        for s in self.shapes:
            if s.size > min(self.width, self.height):
                raise ValueError(f"a {s.size}px {s.kind} does not fit in a {self.width}x{self.height} world")


# ------------------------------------------------------------------------------------ sampling


class Subject(NamedTuple):
    """What a one-object world's caption names: its background and its object's colour, size name and kind."""

    background: str
    colour: str
    size: str
    kind: str


def vocab_subjects(vocab: str | WorldVocab) -> list[Subject]:
    """Every subject of `vocab` in a fixed order: for a one-object vocabulary, every caption it can draw
    (laptop_big: 2 backgrounds x 4 colours x 2 sizes x 2 kinds = 32)."""
    v = world_vocab(vocab) if isinstance(vocab, str) else vocab
    return [Subject(b, c, s, k) for b in sorted(v.backgrounds) for c in sorted(v.colours) for s, _ in v.sizes
            for k in v.kinds]


def covering_subjects(count: int, seed: int, vocab: str | WorldVocab) -> list[Subject]:
    """`count` subjects that cycle through every subject of `vocab` in shuffled rounds: any
    n * len(subjects) of them hold each subject n times, so a dataset of at least that many worlds
    names every caption (a random draw of 64 laptop_big worlds misses about 4 of the 32)."""
    subjects, rng, out = vocab_subjects(vocab), random.Random(seed), []
    while len(out) < count:
        round_ = list(subjects)
        rng.shuffle(round_)
        out.extend(round_)
    return out[:count]


def sample_world(rng: random.Random, width: int, height: int, fps: int, seconds: float,
                 max_shapes: int | None = None, seed: int | None = None, vocab: str | WorldVocab = "full",
                 subject: Subject | None = None) -> WorldSpec:
    """A random world of `vocab`: 1..max_shapes shapes of distinct colours (none the background's),
    each of a named size and a per-axis speed in `vocab.speed` short sides per second.

    Only `rng` is consumed, so the result is a pure function of its state; `seed` is recorded.
    `max_shapes` (default: the vocabulary's) caps the object count. `subject` (one of
    `vocab_subjects(vocab)`) fixes the background and the first object's colour, size and kind;
    positions, speeds and any further objects stay random.
    """
    v = world_vocab(vocab) if isinstance(vocab, str) else vocab
    max_shapes = v.max_shapes if max_shapes is None else max_shapes
    if max_shapes < 1:
        raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
    if subject is not None and subject not in vocab_subjects(v):
        raise ValueError(f"subject {subject} is not in the vocabulary (background, colour, size name, kind)")
    short = min(width, height)
    background = rng.choice(sorted(v.backgrounds)) if subject is None else subject.background
    palette = sorted(v.colours)
    count = rng.randint(1, min(max_shapes, len(palette)))
    if subject is None:
        colours = rng.sample(palette, count)
    else:
        colours = [subject.colour, *rng.sample([c for c in palette if c != subject.colour], count - 1)]
    shapes = []
    for j, colour in enumerate(colours):
        forced = subject if j == 0 else None
        if forced is None:
            size_name, fraction = rng.choice(v.sizes)
        else:
            size_name, fraction = forced.size, dict(v.sizes)[forced.size]
        size = max(4, int(round(short * fraction)))
        r = size / 2
        pos = (rng.uniform(r, width - r), rng.uniform(r, height - r))
        vel = tuple(rng.choice((-1, 1)) * short * rng.uniform(*v.speed) for _ in range(2))
        kind = rng.choice(v.kinds) if forced is None else forced.kind  # drawn after the speed: the default draw order
        shapes.append(ShapeSpec(kind=kind, colour=colour, rgb=SHAPE_COLOURS[colour], size=size,
                                position=(round(pos[0], 3), round(pos[1], 3)),
                                velocity=(round(vel[0], 3), round(vel[1], 3)), size_name=size_name))
    return WorldSpec(background=background, background_rgb=BACKGROUNDS[background], shapes=shapes,
                     fps=fps, duration=float(seconds), width=width, height=height, seed=seed)


# ------------------------------------------------------------------------------------ dynamics


def _fold(p0: float, v: float, t: float, lo: float, hi: float) -> float:
    span = hi - lo
    if span <= 0:
        return lo
    u = (p0 - lo + v * t) % (2 * span)
    return lo + (u if u <= span else 2 * span - u)


def shape_position(shape: ShapeSpec, t: float, width: int, height: int) -> tuple[float, float]:
    """Centre (x, y) of `shape` at time `t` seconds (elastic bounces off the frame's walls)."""
    r = shape.size / 2
    return (_fold(shape.position[0], shape.velocity[0], t, r, width - r),
            _fold(shape.position[1], shape.velocity[1], t, r, height - r))


def shape_mask(shape: ShapeSpec, cx: float, cy: float, width: int, height: int) -> np.ndarray:
    """bool [H, W]: pixels whose centres lie inside `shape` centred at (cx, cy)."""
    ys = np.arange(height, dtype=np.float64)[:, None] + 0.5
    xs = np.arange(width, dtype=np.float64)[None, :] + 0.5
    dx, dy, r = xs - cx, ys - cy, shape.size / 2
    if shape.kind == "circle":
        return dx * dx + dy * dy <= r * r
    if shape.kind == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    # upward triangle: apex (cx, cy - r), base from (cx - r, cy + r) to (cx + r, cy + r);
    # at height dy its half-width is (dy + r) / 2.
    return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)


# ----------------------------------------------------------------------------------- rendering


def render(spec: WorldSpec) -> Iterator[np.ndarray]:
    """Yield `spec.num_frames` frames, uint8 [H, W, 3], deterministically."""
    background = np.empty((spec.height, spec.width, 3), dtype=np.uint8)
    background[:] = np.asarray(spec.background_rgb, dtype=np.uint8)
    for i in range(spec.num_frames):
        t = i / spec.fps
        frame = background.copy()
        for shape in spec.shapes:
            cx, cy = shape_position(shape, t, spec.width, spec.height)
            frame[shape_mask(shape, cx, cy, spec.width, spec.height)] = np.asarray(shape.rgb, dtype=np.uint8)
        yield frame


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(spec: WorldSpec) -> str:
    """E.g. "a small red circle, a large blue square and a small yellow triangle bouncing on a black
    background" (a shape without `size_name` is named without a size)."""
    words = [" ".join(w for w in (s.size_name, s.colour, s.kind) if w) for s in spec.shapes]
    parts = [f"{_article(w)} {w}" for w in words]
    if not parts:
        return f"an empty {spec.background} background"
    objects = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{objects} bouncing on a {spec.background} background"


def ground_truth(spec: WorldSpec, speed: tuple[float, float] | None = None) -> dict:
    """JSON-serialisable truth: frame geometry, background, object count, and per shape its kind,
    colour, RGB, size, velocity and per-frame centre positions `[[x, y], ...]` (one per frame).
    `speed`: the vocabulary's per-axis (min, max) speed in short sides per second, all that the
    caption's "bouncing" says of the motion (the motion check's bounds); stored as "speed_range"."""
    shapes = []
    for s in spec.shapes:
        positions = [[round(c, 4) for c in shape_position(s, i / spec.fps, spec.width, spec.height)]
                     for i in range(spec.num_frames)]
        shapes.append({"kind": s.kind, "colour": s.colour, "rgb": list(s.rgb), "size": s.size,
                       "velocity": list(s.velocity), "positions": positions})
    return {"width": spec.width, "height": spec.height, "fps": spec.fps, "num_frames": spec.num_frames,
            "duration": spec.duration, "seed": spec.seed, "caption": caption(spec),
            "background": {"name": spec.background, "rgb": list(spec.background_rgb)},
            "count": len(spec.shapes), "shapes": shapes, "spec": spec_to_dict(spec),
            "speed_range": list(speed) if speed is not None else None}


def spec_to_dict(spec: WorldSpec) -> dict:
    """The spec as plain JSON types (tuples become lists); inverse of `spec_from_dict`."""
    return json.loads(json.dumps(asdict(spec)))


def spec_from_dict(d: dict) -> WorldSpec:
    shapes = [ShapeSpec(kind=s["kind"], colour=s["colour"], rgb=tuple(s["rgb"]), size=int(s["size"]),
                        position=tuple(s["position"]), velocity=tuple(s["velocity"]), size_name=s.get("size_name"))
              for s in d["shapes"]]
    return WorldSpec(background=d["background"], background_rgb=tuple(d["background_rgb"]), shapes=shapes,
                     fps=int(d["fps"]), duration=float(d["duration"]), width=int(d["width"]),
                     height=int(d["height"]), seed=d.get("seed"))


# ------------------------------------------------------------------------------------- dataset


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def world_seed(seed: int, index: int) -> int:
    """The per-video seed of video `index` in a dataset drawn with `seed` (stable across runs)."""
    return (seed * 1_000_003 + index) & 0x7FFFFFFF


def world_specs(count: int, width: int, height: int, fps: int, seconds: float, seed: int,
                vocab: str = "full", max_shapes: int | None = None, cover: bool = False) -> list[WorldSpec]:
    """The specs of a world dataset: world i is drawn from `random.Random(world_seed(seed, i))`; with
    `cover`, its subject is `covering_subjects(count, seed, vocab)[i]` (every caption of a one-object
    vocabulary once `count` reaches their number)."""
    subjects = covering_subjects(count, seed, vocab) if cover else [None] * count
    return [sample_world(random.Random(world_seed(seed, i)), width, height, fps, seconds, max_shapes=max_shapes,
                         seed=world_seed(seed, i), vocab=vocab, subject=subjects[i]) for i in range(count)]


def world_truths(count: int, width: int, height: int, fps: int, seconds: float, seed: int,
                 vocab: str = "full", max_shapes: int | None = None, cover: bool = False) -> list[dict]:
    """The ground truths (`ground_truth`) of the first `count` worlds `write_world_dataset` would write
    with these arguments, without rendering a frame: world prompts to evaluate a generator on."""
    speed = world_vocab(vocab).speed
    return [ground_truth(spec, speed) for spec in world_specs(count, width, height, fps, seconds, seed, vocab,
                                                                 max_shapes, cover)]


def write_world_dataset(out_dir: str | Path, count: int, width: int = 64, height: int = 64, fps: int = 16,
                        seconds: float = 4.0, seed: int = 0, max_shapes: int | None = None,
                        vocab: str = "full", cover: bool = False) -> list[Path]:
    """Write `count` worlds as `world_XXXX.mp4` + `world_XXXX.txt` (caption) + `world_XXXX.gt.json`.

    Video `i` is drawn from `random.Random(world_seed(seed, i))`, so the dataset is deterministic
    for a seed and a prefix of a larger dataset equals the smaller one (without `cover`; with it,
    the captions cycle through the vocabulary: `world_specs`). Each file is written under a
    temporary name and renamed into place. Returns the mp4 paths in order.
    """
    from pipeline.video_io import Mp4Writer  # av + torch: only when videos are written

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    scratch = Path(tempfile.mkdtemp(prefix=".world-", dir=out))  # same filesystem: os.replace is atomic
    try:
        speed = world_vocab(vocab).speed
        for i, spec in enumerate(world_specs(count, width, height, fps, seconds, seed, vocab, max_shapes, cover)):
            stem = f"world_{i:04d}"
            video = out / f"{stem}.mp4"
            with Mp4Writer(scratch / video.name, fps=fps, width=width, height=height) as writer:
                for frame in render(spec):
                    writer.write(frame[None])
            os.replace(scratch / video.name, video)
            _write_text_atomic(out / f"{stem}.txt", caption(spec) + "\n")
            _write_text_atomic(out / f"{stem}.gt.json", json.dumps(ground_truth(spec, speed)))
            paths.append(video)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return paths


__all__ = [
    "ANY_SPEED", "BACKGROUNDS", "KINDS", "SHAPE_COLOURS", "WORLD_VOCABS", "ShapeSpec", "Subject", "WorldSpec", "WorldVocab", "caption",
    "covering_subjects", "ground_truth", "render", "sample_world", "shape_mask", "shape_position", "spec_from_dict",
    "spec_to_dict", "vocab_subjects", "world_seed", "world_specs", "world_truths", "world_vocab", "write_world_dataset",
]
