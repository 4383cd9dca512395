"""World ground-truth checks pass on rendered world videos and fail when objects change colour, size or count,
stall or jump."""

from __future__ import annotations

import dataclasses
import json
import random

import av
import numpy as np
import pytest

from data.world import (
    ANY_SPEED,
    SHAPE_COLOURS,
    ShapeSpec,
    WorldSpec,
    ground_truth,
    render,
    sample_world,
    shape_mask,
    shape_position,
    world_seed,
    world_truths,
    world_vocab,
    write_world_dataset,
)
from evaluation.world_checks import (
    WorldChecker,
    check_world_frames,
    chunk_pass_rates,
    chunk_speed,
    expected_objects,
    palette_labels,
)

SEED = 6  # test_world_dataset_mp4_passes
FPS = 16


def world(**changes) -> WorldSpec:
    """Three objects on black, 64 px, 4 s: a red circle, a blue square, a white triangle, moving so that
    none touches another for more than a few frames (every check measures every chunk)."""
    shapes = [
        ShapeSpec("circle", "red", SHAPE_COLOURS["red"], 14, (16.0, 16.0), (8.8, 11.4)),
        ShapeSpec("square", "blue", SHAPE_COLOURS["blue"], 12, (46.0, 40.0), (-11.7, 12.0)),
        ShapeSpec("triangle", "white", SHAPE_COLOURS["white"], 14, (20.0, 48.0), (-6.0, -11.6)),
    ]
    spec = WorldSpec(background="black", background_rgb=(0, 0, 0), shapes=shapes, fps=FPS, duration=4.0)
    return dataclasses.replace(spec, **changes)


def frames_of(spec: WorldSpec) -> np.ndarray:
    return np.stack(list(render(spec)))


def spliced(before: WorldSpec, after: WorldSpec, at_s: float = 2.0) -> np.ndarray:
    """The first `at_s` seconds of `before`, then `after` (same clock, so motion continues)."""
    k = int(at_s * FPS)
    return np.concatenate([frames_of(before)[:k], frames_of(after)[k:]])


def with_shape(spec: WorldSpec, i: int, **changes) -> WorldSpec:
    shapes = list(spec.shapes)
    shapes[i] = dataclasses.replace(shapes[i], **changes)
    return dataclasses.replace(spec, shapes=shapes)


def decode(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


# ----------------------------------------------------------------------------------------- passes


def test_rendered_world_passes():
    spec = world()
    r = check_world_frames(frames_of(spec), spec)
    assert r["passed"], r["failures"]
    json.dumps(r, allow_nan=False)
    assert r["num_frames"] == 64 and r["num_chunks"] == 4
    assert set(r["expected"]) == {"red", "blue", "white"} and r["undetermined"] == []
    for c in r["chunks"]:
        for name, o in c["objects"].items():
            assert o["isolated_frames"] >= 12, (c["index"], name)  # the checks really measured something
            assert o["count_ok"] and o["size_ok"] and o["colour_ok"] and o["motion_ok"]
            assert abs(o["area_vs_truth"]) < 0.1 and o["colour_error_truth"] < 1e-9
    assert r["speed_range"] == list(ANY_SPEED)  # a bare spec names no vocabulary: every vocabulary's range
    red = world().shapes[0]
    assert r["chunks"][0]["objects"]["red"]["speed"] == pytest.approx(np.hypot(*red.velocity), rel=0.1)
    # the truth dict (as written to NAME.gt.json) and the spec are interchangeable
    assert check_world_frames(frames_of(spec), json.loads(json.dumps(ground_truth(spec)))) == r


@pytest.mark.parametrize("size", [32, 64])
def test_sampled_worlds_pass_raw(size):
    for i in range(6):
        s = world_seed(1, i)
        spec = sample_world(random.Random(s), size, size, FPS, 3.0, max_shapes=3, seed=s)
        r = check_world_frames(frames_of(spec), ground_truth(spec))
        assert r["passed"], (size, i, r["failures"])


def test_world_dataset_mp4_passes(tmp_path):
    # seeds whose ground truth never hides a whole object behind another (a hidden object looks vanished)
    videos = write_world_dataset(tmp_path, 3, width=64, height=64, fps=FPS, seconds=3.0, seed=SEED)
    for video in videos:
        gt = json.loads(video.with_name(video.name.replace(".mp4", ".gt.json")).read_text())
        r = check_world_frames(decode(video), gt)
        assert r["passed"], (video.name, r["failures"])
        worst = max(o["colour_error_truth"] for c in r["chunks"] for o in c["objects"].values())
        assert 0 < worst < 30  # the codec moved colours a little, within tolerance


def test_video_smaller_than_the_spec_scales_the_truth():
    spec = world()
    r = check_world_frames(frames_of(spec)[:, ::2, ::2], spec)  # a 32 px video of a 64 px world
    assert r["passed"], r["failures"]
    assert r["expected"]["red"]["area"] == pytest.approx(expected_objects(spec, 64, 64)["red"].area / 4)


def test_streaming_matches_one_shot():
    spec = world()
    frames = frames_of(spec)[:40]
    checker = WorldChecker(spec, chunk_seconds=1.0)
    for i in range(0, len(frames), 7):
        checker.add(frames[i: i + 7])
    r = checker.summary()
    assert r == check_world_frames(frames, spec)
    assert r["chunks"][-1]["partial"] and r["chunks"][-1]["frames"] == 8


def test_chunk_speed():
    line = [(2.0 * f, 10.0) for f in range(16)]  # 2 px per frame
    assert chunk_speed(line, stride=4, fps=16) == pytest.approx(32.0)
    holes = [c if f % 3 else None for f, c in enumerate(line)]  # frames where the object touched another
    assert chunk_speed(holes, stride=4, fps=16) == pytest.approx(32.0)
    assert chunk_speed(line[:7], stride=4, fps=16) is None  # shorter than 2 strides: mostly jitter
    assert chunk_speed([None] * 16, stride=4, fps=16) is None


def test_truths_carry_their_vocabulary_speed(tmp_path):
    laptop = world_vocab("laptop_one").speed
    assert world_truths(1, 32, 32, FPS, 2.0, seed=0, vocab="laptop_one")[0]["speed_range"] == list(laptop)
    video = write_world_dataset(tmp_path, 1, width=32, height=32, fps=FPS, seconds=2.0, seed=0, vocab="laptop_one")[0]
    gt = json.loads(video.with_name("world_0000.gt.json").read_text())
    assert gt["speed_range"] == list(laptop)
    r = check_world_frames(decode(video), gt)
    assert r["passed"], r["failures"]
    assert r["speed_band_px_s"] == pytest.approx([np.sqrt(2) * 32 * laptop[0] / 3, np.sqrt(2) * 32 * laptop[1] * 1.5])


def test_palette_labels():
    spec = world()
    frame = frames_of(spec)[:1]
    checker = WorldChecker(spec)
    lab = palette_labels(frame, checker.palette, 100.0)[0]
    names = {checker.names[i] for i in np.unique(lab)}
    assert names == {"red", "blue", "white", "background"}
    odd = np.full((1, 2, 2, 3), 128, dtype=np.uint8)  # mid grey: > 100 from every palette colour and black
    assert (palette_labels(odd, checker.palette, 100.0) == -1).all()


# ------------------------------------------------------------------------------------------ fails


def failing(r: dict) -> list[int]:
    return [c["index"] for c in r["chunks"] if not c["passed"]]


def test_colour_change_fails():
    spec = world()
    swapped = with_shape(spec, 0, colour="orange", rgb=SHAPE_COLOURS["orange"])  # red circle turns orange
    r = check_world_frames(spliced(spec, swapped), spec)
    assert not r["passed"] and failing(r) == [2, 3]
    assert any("red: 1 object(s) expected" in f for f in r["failures"])
    assert any("unexpected objects (orange)" in f for f in r["failures"])
    # a subtler shift keeps the red label (nearest palette colour) but not the red
    dull = with_shape(spec, 0, rgb=(190, 45, 45))
    r = check_world_frames(spliced(spec, dull), spec)
    assert failing(r) == [2, 3]
    red = r["chunks"][3]["objects"]["red"]
    assert red["count_ok"] and red["size_ok"] and red["colour_ok"] is False
    assert red["colour_error_truth"] == pytest.approx(np.linalg.norm(np.subtract((190, 45, 45), (230, 30, 30))))


def test_size_change_fails():
    spec = world()
    r = check_world_frames(spliced(spec, with_shape(spec, 1, size=18)), spec)  # 12 px square grows to 18 px
    assert failing(r) == [2, 3]
    blue = r["chunks"][2]["objects"]["blue"]
    assert blue["size_ok"] is False and blue["area_vs_truth"] > 1.0 and blue["area_vs_first"] > 1.0
    assert blue["count_ok"] and blue["colour_ok"]


def test_vanished_object_fails():
    spec = world()
    gone = dataclasses.replace(spec, shapes=spec.shapes[:2])  # the white triangle disappears
    r = check_world_frames(spliced(spec, gone), spec)
    assert failing(r) == [2, 3]
    white = r["chunks"][3]["objects"]["white"]
    assert white["count_ok"] is False and white["median_count"] == 0 and white["colour_ok"] is False


def test_duplicated_object_fails():
    spec = world()
    twin = ShapeSpec("circle", "red", SHAPE_COLOURS["red"], 14, (14.0, 50.0), (11.0, -9.0))
    more = dataclasses.replace(spec, shapes=[*spec.shapes, twin])
    r = check_world_frames(spliced(spec, more), spec)
    assert failing(r) == [2, 3]
    red = r["chunks"][3]["objects"]["red"]
    assert red["median_count"] == 2 and red["count_ok"] is False


def test_unexpected_object_fails():
    spec = world()
    extra = ShapeSpec("square", "green", SHAPE_COLOURS["green"], 10, (50.0, 50.0), (5.0, -6.0))
    r = check_world_frames(spliced(spec, dataclasses.replace(spec, shapes=[*spec.shapes, extra])), spec)
    assert failing(r) == [2, 3]
    assert r["chunks"][2]["spurious"] == {"green": 1.0}


def test_stalled_object_fails():
    spec = world()
    red = spec.shapes[0]
    frozen = with_shape(spec, 0, position=shape_position(red, 2.0, spec.width, spec.height), velocity=(0.0, 0.0))
    r = check_world_frames(spliced(spec, frozen), spec)  # the red circle stops at 2 s; the others go on
    assert failing(r) == [2, 3]
    o = r["chunks"][3]["objects"]["red"]
    assert o["motion_ok"] is False and o["speed"] < 0.1
    assert o["count_ok"] and o["size_ok"] and o["colour_ok"]  # only the motion check sees a frozen object
    assert any("red: stalled" in f for f in r["failures"])
    assert [c["failed_checks"] for c in r["chunks"]] == [[], [], ["motion"], ["motion"]]


def test_jumping_object_fails():
    """Block-wise generation's seams: from 2 s on, each 3-frame block draws the red circle anywhere (the
    block lost track of where the previous one left it), so it jumps at every seam."""
    spec = world()
    red = spec.shapes[0]
    frames = frames_of(dataclasses.replace(spec, shapes=spec.shapes[1:]))
    rng = np.random.default_rng(0)
    for start in range(0, len(frames), 3):
        anywhere = rng.uniform(red.size / 2, spec.width - red.size / 2, size=2)
        for f in range(start, min(start + 3, len(frames))):
            cx, cy = shape_position(red, f / FPS, spec.width, spec.height) if start < 2 * FPS else anywhere
            frames[f][shape_mask(red, cx, cy, spec.width, spec.height)] = red.rgb
    r = check_world_frames(frames, spec, speed=world_vocab("laptop").speed)
    assert failing(r) == [2, 3]
    o = r["chunks"][2]["objects"]["red"]
    assert o["motion_ok"] is False and o["speed"] > r["speed_band_px_s"][1]
    assert any("red: jumping" in f for f in r["failures"])


def test_chunk_pass_rate_of_a_real_and_a_perturbed_world_video(tmp_path):
    """A decoded mp4 of the laptop world passes every chunk; the same video with its object recoloured
    from 3 s on fails exactly the chunks from 3 s on, and the rates over time say so."""
    videos = write_world_dataset(tmp_path, 1, width=32, height=32, fps=FPS, seconds=6.0, seed=2, vocab="laptop")
    gt = json.loads(videos[0].with_name("world_0000.gt.json").read_text())
    frames = decode(videos[0])
    real = check_world_frames(frames, gt)
    assert real["passed"], real["failures"]
    bad = frames.copy()
    obj = (np.abs(bad[3 * FPS:].astype(int) - gt["background"]["rgb"]).sum(-1) > 60)
    bad[3 * FPS:][obj] = SHAPE_COLOURS["magenta"]  # a colour the prompt did not ask for
    perturbed = check_world_frames(bad, gt)
    assert [c["passed"] for c in perturbed["chunks"]] == [True, True, True, False, False, False]
    rates = chunk_pass_rates([real, perturbed])
    assert rates["world_chunk_pass_rate_by_chunk"] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]
    assert rates["world_chunk_pass_rate"] == pytest.approx(0.75)
    assert rates["world_chunk_times_s"] == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]
    assert rates["world_pass_rate_first_third"] == 1.0 and rates["world_pass_rate_last_third"] == 0.5
    assert rates["world_drift"] == 0.5 and rates["world_pass_rate"] == 0.5
    assert [c["failed_checks"] for c in perturbed["chunks"]][2:4] == [[], ["count", "size", "colour", "spurious"]]
    assert rates["world_check_failure_rates"]["spurious"] == pytest.approx(0.25)  # 3 of 12 chunks
    assert rates["world_check_failure_rates"]["motion"] == 0.0
    assert chunk_pass_rates([])["world_chunk_pass_rate"] is None
