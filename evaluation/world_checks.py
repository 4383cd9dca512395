"""Ground-truth checks for videos of procedural worlds (`data.world`): objects keep colour, size and count,
and keep moving.

A world prompt names its objects exactly (caption <-> WorldSpec), and every object keeps its colour,
size, count and speed for the whole video, so a generated video of that prompt can be checked per chunk
without knowing where the generator put the objects:

1. Segment by the known palette. Each pixel gets the nearest of the palette colours (all of
   `SHAPE_COLOURS` plus this world's background) when it is within `colour_distance` (RGB, Euclidean)
   of it, else no label (edges blended by the codec, or colours that belong to nothing).
2. Per frame and expected colour c: the pixels of c give the object's colour (area-weighted mean RGB
   of its interior, i.e. the mask eroded by one pixel, so codec-blended edges do not bias it). When c
   touches no other object (no other object pixel within `contact_px`), the frame is *isolated* for c
   and also gives the count (8-connected components of c with at least `min_component_px` pixels;
   smaller specks are codec noise; pieces at most 2 `bridge_px` apart are one component, as codec
   ringing can cut a row out of a shape) and the area (pixels of c). Touching objects are skipped for count
   and area because occlusion merges, splits or hides them. Palette colours that the spec does not use
   are "spurious" when one of their components reaches half the smallest expected object's area.
3. Per chunk (chunks of `evaluation.chunks`):
     count   the spec's number of c-coloured objects in at least `count_fraction` of the isolated frames
             (a majority by default: a small object wholly behind a bigger one looks vanished in that
             frame), and spurious objects in at most `spurious_fraction` of all frames;
     size    median isolated area A vs the truth (the shapes' unoccluded pixel areas, rasterised with
             `data.world.shape_mask` and averaged over 16 sub-pixel placements, scaled to the video's
             frame size) and vs chunk 0: |A - A_ref| <= `area_rel` A_ref + `area_px` (the absolute
             slack covers rasterisation of 5-px shapes, whose pixel count varies with placement);
     colour  mean RGB vs the spec's RGB and vs chunk 0: distance <= `colour_error`;
     motion  (one-object colours) the object's speed, |centroid(f + s) - centroid(f)| fps / s averaged
             over the chunk's isolated frame pairs s = `motion_stride` frames apart, lies in
             [`speed_low` v_min, `speed_high` v_max]. The caption says "bouncing", and the world's
             vocabulary draws each axis's speed in (a, b) short sides per second (the truth's
             "speed_range"), so |v| is in [v_min, v_max] = sqrt(2) (a, b) * short side; bounces keep
             |v|. Below the band the object has stalled (a frozen stream passes every other check);
             above it, it jumps between frames (block-wise generation's seams). Chunks shorter than
             2 s frames are undetermined for motion: a few pairs of a slow object are mostly jitter.
   A check with nothing to measure (no isolated frame of c in the chunk) is undetermined (None), not
   failed. A chunk passes when none of its checks fails; the video passes when every chunk does.

Input: raw frames (the generator's uint8 output) at any size. Decoded yuv420p mp4s work at 64 px and
up; at 32 px chroma subsampling smears the 5-10 px shapes' colours and the colour check can fail.

`WorldChecker(truth, chunk_seconds).add(frames)` streams (per-chunk sums only); `.summary()` returns
plain JSON types with a `failures` list of readable reasons and an `undetermined` list of the checks
that had nothing to measure. `truth` is a `WorldSpec` or the
`ground_truth()` dict (`NAME.gt.json`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from data.world import ANY_SPEED, SHAPE_COLOURS, WorldSpec, shape_mask, shape_position, spec_from_dict

from .chunks import Chunk, Chunker
from .drift import as_frames, jsonable

EIGHT = np.ones((3, 3), dtype=bool)
CHECKS = ("count", "size", "colour", "motion")  # per object and chunk; a chunk passes when none fails
FAILURE_KINDS = (*CHECKS, "spurious")  # what a chunk can fail: a per-object check, or objects nobody asked for


@dataclass(frozen=True)
class WorldTolerances:
    colour_distance: float = 100.0  # a pixel takes its nearest palette label only this close (RGB) to it
    min_component_px: int = 3  # smaller components are ignored (codec speckle)
    bridge_px: int = 1  # pieces of one colour up to 2 * bridge_px apart are one component (codec ringing)
    count_fraction: float = 0.5  # isolated frames of a chunk that must show the right count (a small object
    # fully hidden behind a bigger one looks like a vanished one in that frame; only a majority is required)
    contact_px: int = 1  # objects closer than this (Chebyshev px) count as touching: not isolated
    spurious_fraction: float = 0.2  # frames of a chunk allowed to show objects of colours the spec lacks
    area_rel: float = 0.3  # |median area - reference| <= area_rel * reference + area_px
    area_px: float = 2.0
    colour_error: float = 30.0  # RGB distance of an object's mean colour to the reference
    motion_stride: int = 4  # frames between the centroids compared: a quarter second at 16 fps, where the
    # slowest object moves >= 1.1 px and centroid jitter (~0.3 px) is small beside it
    speed_low: float = 1 / 3  # slowest passing speed, as a share of the slowest the vocabulary draws: a
    # stall; the shipped teacher draws slower than its data (median 0.5 of the data's), never this slow
    speed_high: float = 1.5  # fastest passing speed, as a multiple of the fastest the vocabulary draws


@dataclass
class _Expected:
    colour: str
    rgb: np.ndarray
    count: int
    area: float  # total unoccluded pixel area of this colour's objects at the video's frame size


def _truth_speed(truth: WorldSpec | dict) -> tuple[float, float]:
    """The per-axis speed range (short sides / s) a ground truth promises; `ANY_SPEED` when it has none."""
    speed = truth.get("speed_range") if isinstance(truth, dict) else None
    return (float(speed[0]), float(speed[1])) if speed else ANY_SPEED


def chunk_speed(centres: list[tuple[float, float] | None], stride: int, fps: float) -> float | None:
    """Mean speed (px / s) of an object from its per-frame centroids (None: not measurable in that
    frame): mean |c[f + s] - c[f]| * fps / s over the pairs s = stride frames apart with both ends
    known. None when the chunk is shorter than 2 s frames or no pair has both ends."""
    if stride < 1 or len(centres) < 2 * stride:
        return None
    d = [math.dist(a, b) for a, b in zip(centres[:-stride], centres[stride:]) if a is not None and b is not None]
    return float(np.mean(d)) * fps / stride if d else None


def _spec_of(truth: WorldSpec | dict) -> WorldSpec:
    if isinstance(truth, WorldSpec):
        return truth
    if "spec" in truth:
        return spec_from_dict(truth["spec"])
    return spec_from_dict(truth)


def expected_objects(spec: WorldSpec, height: int, width: int) -> dict[str, _Expected]:
    """Per colour: RGB, object count and unoccluded area. A shape's area is its rasterised pixel count
    averaged over a 4 x 4 grid of sub-pixel offsets of its t = 0 centre (a small shape's count depends
    on its phase), scaled by the ratio of frame areas when the video is not at the spec's size."""
    scale = (height * width) / (spec.height * spec.width)
    offsets = [(dx, dy) for dx in (-0.375, -0.125, 0.125, 0.375) for dy in (-0.375, -0.125, 0.125, 0.375)]
    out: dict[str, _Expected] = {}
    for shape in spec.shapes:
        cx, cy = shape_position(shape, 0.0, spec.width, spec.height)
        area = np.mean([shape_mask(shape, cx + dx, cy + dy, spec.width, spec.height).sum() for dx, dy in offsets])
        e = out.setdefault(shape.colour, _Expected(shape.colour, np.asarray(shape.rgb, dtype=np.float64), 0, 0.0))
        e.count += 1
        e.area += float(area) * scale
    return out


def palette_labels(frames: np.ndarray, palette: np.ndarray, max_distance: float) -> np.ndarray:
    """int [n, H, W]: index of the nearest palette row within `max_distance`, else -1."""
    x = frames.astype(np.float32)
    d2 = ((x[..., None, :] - palette.astype(np.float32)) ** 2).sum(axis=-1)  # [n, H, W, P]
    label = d2.argmin(axis=-1)
    label[np.take_along_axis(d2, label[..., None], axis=-1)[..., 0] > max_distance ** 2] = -1
    return label


def components(mask: np.ndarray, min_px: int, bridge_px: int = 0) -> list[int]:
    """Pixel counts of the 8-connected components of `mask` with at least `min_px` pixels; with
    `bridge_px` = b > 0, pieces separated by gaps of up to 2 b pixels (each grows by b; codec ringing
    cuts a row out of a shape now and then) are one component, still counted by their own pixels."""
    if bridge_px > 0 and mask.any():
        grown = ndimage.binary_dilation(mask, structure=EIGHT, iterations=bridge_px)
        lab, n = ndimage.label(grown, structure=EIGHT)
        lab = np.where(mask, lab, 0)
    else:
        lab, n = ndimage.label(mask, structure=EIGHT)
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    return [int(s) for s in sizes if s >= min_px]


@dataclass
class _ChunkObs:
    """Per-frame observations of one chunk (a chunk's frames: bounded)."""

    frames: int = 0
    count_ok: dict[str, int] = field(default_factory=dict)
    counts: dict[str, list[int]] = field(default_factory=dict)
    areas: dict[str, list[int]] = field(default_factory=dict)
    rgb_sum: dict[str, np.ndarray] = field(default_factory=dict)
    rgb_px: dict[str, int] = field(default_factory=dict)
    isolated: dict[str, int] = field(default_factory=dict)
    spurious_frames: int = 0
    spurious: dict[str, int] = field(default_factory=dict)
    centres: dict[str, list[tuple[float, float] | None]] = field(default_factory=dict)  # per frame (x, y)


class WorldChecker:
    """Streaming colour / size / count / motion checks of a video against its world's truth (module docstring)."""

    def __init__(self, truth: WorldSpec | dict, chunk_seconds: float = 1.0, fps: float | None = None,
                 tolerances: WorldTolerances | None = None, speed: tuple[float, float] | None = None):
        self.spec = _spec_of(truth)
        self.speed = tuple(speed) if speed is not None else _truth_speed(truth)  # per axis, short sides / s
        self.speed_band: tuple[float, float] | None = None  # passing |v| (px / s), set with the frame size
        self.tol = tolerances or WorldTolerances()
        self.fps = float(fps or self.spec.fps)
        self.chunker = Chunker(self.fps, chunk_seconds)
        self.chunk_seconds = float(chunk_seconds)
        bg = np.asarray(self.spec.background_rgb, dtype=np.float64)
        self.names = [*sorted(SHAPE_COLOURS), "background"]
        self.palette = np.stack([np.asarray(SHAPE_COLOURS[c], dtype=np.float64) for c in sorted(SHAPE_COLOURS)] + [bg])
        self.expected: dict[str, _Expected] | None = None
        self._contact = np.ones((2 * self.tol.contact_px + 1,) * 2, dtype=bool)
        self._open: dict[int, _ChunkObs] = {}
        self._done: list[dict] = []

    def _observe(self, frame_labels: np.ndarray, frame: np.ndarray, obs: _ChunkObs) -> None:
        assert self.expected is not None
        obs.frames += 1
        smallest = min((e.area / e.count for e in self.expected.values()), default=0.0)
        objects = (frame_labels >= 0) & (frame_labels != len(self.names) - 1)  # any object colour
        spurious_here = False
        for p, name in enumerate(self.names[:-1]):
            mask = frame_labels == p
            if name in self.expected:
                e = self.expected[name]
                centres = obs.centres.setdefault(name, []) if e.count == 1 else None
                if centres is not None:
                    centres.append(None)  # replaced below when this frame shows the object on its own
                interior = ndimage.binary_erosion(mask, structure=EIGHT)
                colour_px = interior if interior.any() else mask
                obs.rgb_sum[name] = obs.rgb_sum.get(name, np.zeros(3)) + frame[colour_px].sum(axis=0, dtype=np.float64)
                obs.rgb_px[name] = obs.rgb_px.get(name, 0) + int(colour_px.sum())
                near = ndimage.binary_dilation(mask, structure=self._contact) if mask.any() else mask
                if (near & objects & ~mask).any():
                    continue  # touching another object: occlusion may merge, split or hide it this frame
                comps = components(mask, self.tol.min_component_px, self.tol.bridge_px)
                obs.isolated[name] = obs.isolated.get(name, 0) + 1
                obs.counts.setdefault(name, []).append(len(comps))
                obs.count_ok[name] = obs.count_ok.get(name, 0) + int(len(comps) == e.count)
                area = int(mask.sum())
                obs.areas.setdefault(name, []).append(area)
                if centres is not None and area >= self.tol.min_component_px:
                    ys, xs = np.nonzero(mask)
                    centres[-1] = (float(xs.mean()), float(ys.mean()))
            elif mask.any():
                comps = components(mask, max(self.tol.min_component_px, math.ceil(0.5 * smallest)),
                                   self.tol.bridge_px)
                if comps:
                    spurious_here = True
                    obs.spurious[name] = obs.spurious.get(name, 0) + 1
        obs.spurious_frames += int(spurious_here)

    def add(self, frames: np.ndarray) -> None:
        frames = as_frames(frames)
        if not len(frames):
            return
        if self.expected is None:
            self.expected = expected_objects(self.spec, frames.shape[1], frames.shape[2])
            v = math.sqrt(2) * min(frames.shape[1], frames.shape[2])
            self.speed_band = (self.tol.speed_low * self.speed[0] * v, self.tol.speed_high * self.speed[1] * v)
        for piece in self.chunker.push(len(frames)):
            obs = self._open.setdefault(piece.chunk, _ChunkObs())
            for j in range(piece.offset, piece.offset + piece.count):  # per frame: labels are [H, W, palette]
                self._observe(palette_labels(frames[j: j + 1], self.palette, self.tol.colour_distance)[0],
                              frames[j], obs)
            if piece.completes:
                self._done.append(self._record(self.chunker.chunk(piece.chunk), self._open.pop(piece.chunk)))

    def _record(self, chunk: Chunk, obs: _ChunkObs) -> dict:
        assert self.expected is not None
        first = self._done[0]["objects"] if self._done else None
        objects, failures = {}, []
        for name, e in self.expected.items():
            isolated = obs.isolated.get(name, 0)
            areas = obs.areas.get(name, [])
            area = float(np.median(areas)) if areas else None
            px = obs.rgb_px.get(name, 0)
            rgb = obs.rgb_sum[name] / px if px else None
            ref = first.get(name) if first is not None else None
            o = {"expected_count": e.count, "isolated_frames": isolated,
                 "median_count": float(np.median(obs.counts[name])) if isolated else None,
                 "count_ok_fraction": obs.count_ok.get(name, 0) / isolated if isolated else None,
                 "median_area": area, "expected_area": e.area,
                 "area_vs_truth": _rel(area, e.area),
                 "area_vs_first": _rel(area, ref["median_area"] if ref else area),  # chunk 0 vs itself: 0
                 "mean_rgb": rgb,
                 "colour_error_truth": _dist(rgb, e.rgb),
                 "colour_error_first": _dist(rgb, ref["mean_rgb"] if ref else rgb)}
            # None = undetermined (the object touched others in every frame of the chunk): not a failure
            o["count_ok"] = None if not isolated else o["count_ok_fraction"] >= self.tol.count_fraction
            first_area = ref["median_area"] if ref else area
            o["size_ok"] = _within(self._area_excess(area, e.area), self._area_excess(area, first_area), bound=0.0)
            o["colour_ok"] = (False if rgb is None else
                              _within(o["colour_error_truth"], o["colour_error_first"], bound=self.tol.colour_error))
            speed = chunk_speed(obs.centres[name], self.tol.motion_stride, self.fps) if name in obs.centres else None
            lo, hi = self.speed_band
            o["speed"] = speed
            o["motion_ok"] = None if speed is None else lo <= speed <= hi
            objects[name] = o
            where = f"chunk {chunk.index} ({chunk.start_s:.2f}-{chunk.stop_s:.2f} s): {name}"
            if o["count_ok"] is False:
                failures.append(f"{where}: {e.count} object(s) expected, right count in {o['count_ok_fraction']:.0%} "
                                f"of {isolated} isolated frames (median {o['median_count']:g})")
            if o["size_ok"] is False:
                failures.append(f"{where}: median area {_num(area)} px vs truth {e.area:.1f} px "
                                f"({_pct(o['area_vs_truth'])}), vs chunk 0 {_pct(o['area_vs_first'])}")
            if o["colour_ok"] is False:
                failures.append(f"{where}: mean colour {_rgb(rgb)} vs truth {_rgb(e.rgb)} "
                                f"(error {_num(o['colour_error_truth'])}), vs chunk 0 {_num(o['colour_error_first'])}")
            if o["motion_ok"] is False:
                failures.append(f"{where}: {'stalled' if speed < lo else 'jumping'}: speed {speed:.1f} px/s "
                                f"outside {lo:.1f}-{hi:.1f} px/s")
        spurious_frac = obs.spurious_frames / obs.frames
        failed = {check for o in objects.values() for check in CHECKS if o[f"{check}_ok"] is False}
        if spurious_frac > self.tol.spurious_fraction:
            failed.add("spurious")
            failures.append(f"chunk {chunk.index}: unexpected objects ({', '.join(sorted(obs.spurious))}) in "
                            f"{spurious_frac:.0%} of frames")
        rec = chunk.as_dict()
        rec.update({"objects": objects, "spurious_frame_fraction": spurious_frac,
                    "spurious": {k: v / obs.frames for k, v in sorted(obs.spurious.items())},
                    "passed": not failures, "failed_checks": [k for k in FAILURE_KINDS if k in failed],
                    "failures": failures})
        return rec

    def _area_excess(self, area: float | None, ref: float | None) -> float | None:
        """|A - A_ref| - (area_rel A_ref + area_px): <= 0 passes, None when either is unknown."""
        if area is None or ref is None:
            return None
        return abs(area - ref) - (self.tol.area_rel * ref + self.tol.area_px)

    def summary(self) -> dict:
        chunks = list(self._done)
        k = self.chunker.open_chunk()
        if k is not None:
            chunks.append(self._record(self.chunker.chunk(k), self._open[k]))
        failures = [f for c in chunks for f in c["failures"]]
        undetermined = [f"chunk {c['index']}: {name}: {check}" for c in chunks for name, o in c["objects"].items()
                        for check in CHECKS if o[f"{check}_ok"] is None]
        expected = {n: {"count": e.count, "area": e.area, "rgb": e.rgb} for n, e in (self.expected or {}).items()}
        return jsonable({"passed": bool(chunks) and not failures, "num_frames": self.chunker.num_frames,
                         "fps": self.fps, "chunk_seconds": self.chunk_seconds, "num_chunks": len(chunks),
                         "expected": expected, "tolerances": vars(self.tol), "speed_range": list(self.speed),
                         "speed_band_px_s": list(self.speed_band) if self.speed_band else None, "chunks": chunks,
                         "failures": failures, "undetermined": undetermined})


def _rel(value: float | None, ref: float | None) -> float | None:
    return value / ref - 1 if value is not None and ref else None


def _dist(a, b) -> float | None:
    return None if a is None or b is None else float(np.linalg.norm(np.asarray(a) - np.asarray(b)))


def _within(*values: float | None, bound: float) -> bool | None:
    """True when every defined value is <= bound, None when none is defined."""
    defined = [v for v in values if v is not None]
    return None if not defined else all(v <= bound for v in defined)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.0%}"


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def _rgb(v) -> str:
    return "none" if v is None else "(" + ", ".join(f"{c:.0f}" for c in v) + ")"


def check_world_frames(frames: np.ndarray, truth: WorldSpec | dict, chunk_seconds: float = 1.0,
                       tolerances: WorldTolerances | None = None, fps: float | None = None,
                       speed: tuple[float, float] | None = None) -> dict:
    """One-shot convenience over an in-memory clip."""
    checker = WorldChecker(truth, chunk_seconds, fps=fps, tolerances=tolerances, speed=speed)
    checker.add(frames)
    return checker.summary()


def chunk_pass_rates(summaries: list[dict]) -> dict:
    """The world pass rate over streams and over time, from `WorldChecker.summary()`s of streams that
    share one chunk grid (one sampler's streams of several prompts):

        world_chunk_pass_rate           share of (stream, chunk) pairs passing every check
        world_chunk_pass_rate_by_chunk  [k]: share of streams whose chunk k passes
        world_chunk_times_s             [k]: chunk k's mid-time (s)
        world_pass_rate_first_third     the rate over chunks [0, n3) and over the last n3 chunks,
        world_pass_rate_last_third      n3 = max(1, n // 3): a flat stream has them equal
        world_drift                     1 - last-third rate: the share of chunks failing late in the
                                        stream (the ablation's `drift`, lower is better)
        world_pass_rate                 share of streams passing in every chunk
        world_check_failure_rates       {kind: share of (stream, chunk) pairs failing it} for every kind
                                        of `FAILURE_KINDS` (a chunk may fail several)

    Values are None when no stream has a chunk."""
    passed: dict[int, list[bool]] = {}
    times: dict[int, float] = {}
    failed = dict.fromkeys(FAILURE_KINDS, 0)
    for summary in summaries:
        for c in summary.get("chunks") or []:
            k = int(c["index"])
            passed.setdefault(k, []).append(bool(c["passed"]))
            for kind in c.get("failed_checks") or []:
                failed[kind] += 1
            times.setdefault(k, (float(c["start_s"]) + float(c["stop_s"])) / 2)
    ks = sorted(passed)

    total = sum(len(v) for v in passed.values())

    def rate(keys) -> float | None:
        flags = [f for k in keys for f in passed[k]]
        return sum(flags) / len(flags) if flags else None

    n3 = max(1, len(ks) // 3)
    last = rate(ks[-n3:]) if ks else None
    return {"world_chunk_pass_rate": rate(ks),
            "world_chunk_pass_rate_by_chunk": [rate([k]) for k in ks],
            "world_chunk_times_s": [times[k] for k in ks],
            "world_pass_rate_first_third": rate(ks[:n3]) if ks else None,
            "world_pass_rate_last_third": last,
            "world_drift": None if last is None else 1.0 - last,
            "world_pass_rate": (sum(bool(s.get("passed")) for s in summaries) / len(summaries)) if summaries else None,
            "world_check_failure_rates": {kind: n / total if total else None for kind, n in failed.items()}}


__all__ = ["CHECKS", "FAILURE_KINDS", "WorldChecker", "WorldTolerances", "check_world_frames", "chunk_pass_rates", "chunk_speed",
           "components",
           "expected_objects", "palette_labels"]
