"""The procedural world: real mp4s decoded with PyAV agree with the spec and its ground truth."""

from __future__ import annotations

import json
import math
import random

import av
import numpy as np
import pytest

from data.world import (
    BACKGROUNDS,
    SHAPE_COLOURS,
    WORLD_VOCABS,
    ShapeSpec,
    Subject,
    WorldSpec,
    caption,
    covering_subjects,
    ground_truth,
    render,
    sample_world,
    shape_mask,
    spec_from_dict,
    vocab_subjects,
    world_seed,
    world_specs,
    write_world_dataset,
)

W = H = 64
FPS = 16
SECONDS = 2.0
COUNT = 4


def decode(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def load_gt(video) -> dict:
    return json.loads(video.with_name(video.name.replace(".mp4", ".gt.json")).read_text())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    return write_world_dataset(out, COUNT, width=W, height=H, fps=FPS, seconds=SECONDS, seed=3)


def occluders(spec: WorldSpec, gt: dict, k: int, i: int) -> np.ndarray:
    """Pixels covered at frame i by shapes drawn after shape k."""
    occ = np.zeros((H, W), dtype=bool)
    for j in range(k + 1, len(spec.shapes)):
        x, y = gt["shapes"][j]["positions"][i]
        occ |= shape_mask(spec.shapes[j], x, y, W, H)
    return occ


def test_files_written_and_decodable(dataset):
    assert [p.name for p in dataset] == [f"world_{i:04d}.mp4" for i in range(COUNT)]
    for video in dataset:
        gt = load_gt(video)
        assert video.with_suffix(".txt").read_text().strip() == gt["caption"]
        frames = decode(video)
        assert len(frames) == gt["num_frames"] == int(SECONDS * FPS)
        assert all(f.shape == (H, W, 3) for f in frames)
        assert gt["count"] == len(gt["shapes"]) >= 1
        assert all(len(s["positions"]) == gt["num_frames"] for s in gt["shapes"])
    assert not [p for p in dataset[0].parent.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_decoded_colours_match_ground_truth(dataset):
    palette = {**SHAPE_COLOURS, **{f"bg:{k}": v for k, v in BACKGROUNDS.items()}}
    names, table = list(palette), np.array(list(palette.values()), dtype=np.int64)
    checked = total = 0
    for video in dataset:
        gt, frames = load_gt(video), decode(video)
        spec = spec_from_dict(gt["spec"])
        for k, shape in enumerate(gt["shapes"]):
            for i, (x, y) in enumerate(shape["positions"]):
                total += 1
                r, c = int(y), int(x)
                if occluders(spec, gt, k, i)[max(r - 2, 0):r + 3, max(c - 2, 0):c + 3].any():
                    continue  # a later shape is drawn over this one's centre
                pixel = frames[i][r, c].astype(np.int64)
                assert np.abs(pixel - shape["rgb"]).max() <= 40, (video.name, k, i, pixel, shape["rgb"])
                assert names[int(np.abs(table - pixel).sum(1).argmin())] == shape["colour"]
                checked += 1
        # background: pixels at least 2 px away from every shape keep the background colour
        for i, frame in enumerate(frames):
            covered = np.zeros((H + 4, W + 4), dtype=bool)
            for s, g in zip(spec.shapes, gt["shapes"]):
                m = shape_mask(s, *g["positions"][i], W, H)
                for dy in range(5):
                    for dx in range(5):
                        covered[dy:dy + H, dx:dx + W] |= m
            free = ~covered[2:2 + H, 2:2 + W]
            assert free.any()
            mean = frame[free].astype(np.float64).mean(0)
            assert np.abs(mean - gt["background"]["rgb"]).max() <= 12, (video.name, i, mean)
    assert checked >= total // 2, f"only {checked}/{total} centres were unoccluded: the check is vacuous"


def test_raw_frames_exact_colours_and_sizes():
    spec = WorldSpec(background="black", background_rgb=(0, 0, 0), fps=8, duration=1.0, width=W, height=H,
                     shapes=[ShapeSpec("circle", "red", SHAPE_COLOURS["red"], 20, (15.0, 15.0), (10.0, 0.0)),
                             ShapeSpec("square", "green", SHAPE_COLOURS["green"], 12, (45.0, 45.0), (0.0, -8.0)),
                             ShapeSpec("triangle", "blue", SHAPE_COLOURS["blue"], 16, (15.0, 48.0), (5.0, 0.0))])
    frames = list(render(spec))
    assert len(frames) == 8 and frames[0].dtype == np.uint8 and frames[0].shape == (H, W, 3)
    expected_area = {"circle": math.pi * 10**2, "square": 12**2, "triangle": 16 * 16 / 2}
    gt = ground_truth(spec)
    for i, frame in enumerate(frames):
        colours = {tuple(int(v) for v in c) for c in frame.reshape(-1, 3)}
        assert colours == {(0, 0, 0)} | {s.rgb for s in spec.shapes}
        for s, g in zip(spec.shapes, gt["shapes"]):
            x, y = g["positions"][i]
            assert tuple(frame[int(y), int(x)]) == s.rgb
            area = int(np.all(frame == s.rgb, axis=-1).sum())
            assert abs(area - expected_area[s.kind]) <= 0.12 * expected_area[s.kind], (s.kind, area)


def test_elastic_bounce_keeps_shapes_inside():
    shape = ShapeSpec("square", "white", SHAPE_COLOURS["white"], 10, (55.0, 32.0), (40.0, -25.0))
    spec = WorldSpec(background="gray", background_rgb=BACKGROUNDS["gray"], shapes=[shape], fps=FPS,
                     duration=6.0, width=W, height=H)
    pos = np.array(ground_truth(spec)["shapes"][0]["positions"])
    assert pos[:, 0].min() >= 5 - 1e-6 and pos[:, 0].max() <= W - 5 + 1e-6
    assert pos[:, 1].min() >= 5 - 1e-6 and pos[:, 1].max() <= H - 5 + 1e-6
    step = np.abs(np.diff(pos, axis=0))
    assert np.all(step <= np.array([40.0, 25.0]) / FPS + 1e-3)  # never faster than |v|
    free = np.isclose(step, np.array([40.0, 25.0]) / FPS, atol=1e-3).all(axis=1)
    assert free.mean() > 0.8  # away from the walls it moves at exactly v
    dx = np.sign(np.diff(pos[:, 0]))
    assert (dx[1:] != dx[:-1]).sum() >= 4  # 6 s at 40 px/s in a 54 px track: several bounces


def test_deterministic_for_a_seed(dataset, tmp_path):
    again = write_world_dataset(tmp_path / "a", 2, width=W, height=H, fps=FPS, seconds=SECONDS, seed=3)
    for a, b in zip(again, dataset[:2]):
        assert load_gt(a) == load_gt(b)
        assert a.with_suffix(".txt").read_text() == b.with_suffix(".txt").read_text()
        assert a.read_bytes() == b.read_bytes(), "same seed must give byte-identical mp4s"
    other = write_world_dataset(tmp_path / "b", 2, width=W, height=H, fps=FPS, seconds=SECONDS, seed=4)
    assert [load_gt(p)["spec"] for p in other] != [load_gt(p)["spec"] for p in dataset[:2]]


def test_captions_mention_every_shape_and_gt_is_json():
    kinds_seen = set()
    for i in range(60):
        spec = sample_world(random.Random(i), W, H, FPS, 1.0, max_shapes=3)
        text = caption(spec)
        assert 1 <= len(spec.shapes) <= 3
        assert len({s.colour for s in spec.shapes}) == len(spec.shapes), "colours identify objects"
        assert all(s.rgb != spec.background_rgb and s.size <= min(W, H) for s in spec.shapes)
        for s in spec.shapes:
            assert f"{s.size_name} {s.colour} {s.kind}" in text, (text, s)
            kinds_seen.add(s.kind)
        assert text.endswith(f"on a {spec.background} background")
        assert " a o" not in text and " a e" not in text  # "an orange", not "a orange"
        gt = json.loads(json.dumps(ground_truth(spec)))
        assert gt["count"] == len(spec.shapes)
        assert [s["rgb"] for s in gt["shapes"]] == [list(s.rgb) for s in spec.shapes]
        assert spec_from_dict(gt["spec"]) == spec
    assert kinds_seen == {"circle", "square", "triangle"}
    with pytest.raises(ValueError, match="kind"):
        ShapeSpec("hexagon", "red", (1, 2, 3), 5, (0.0, 0.0), (0.0, 0.0))


@pytest.mark.parametrize("name", sorted(WORLD_VOCABS))
def test_vocabularies_name_every_checked_property(name):
    """Fairness of the world checks: colour, count and size follow from the caption alone."""
    vocab = WORLD_VOCABS[name]
    by_caption: dict[str, set] = {}
    for i in range(200):
        spec = sample_world(random.Random(i), 32, 32, FPS, 1.0, vocab=name)
        assert 1 <= len(spec.shapes) <= vocab.max_shapes
        assert spec.background in vocab.backgrounds
        for sh in spec.shapes:
            assert sh.colour in vocab.colours and sh.kind in vocab.kinds
            assert sh.size == max(4, round(32 * dict(vocab.sizes)[sh.size_name]))
            lo, hi = (32 * v for v in vocab.speed)
            assert all(lo - 1e-3 <= abs(v) <= hi + 1e-3 for v in sh.velocity)
        key = sorted((sh.colour, sh.kind, sh.size) for sh in spec.shapes)
        by_caption.setdefault(caption(spec), set()).add((spec.background, tuple(map(tuple, key))))
    assert all(len(truths) == 1 for truths in by_caption.values()), "one caption, one set of checked properties"
    if name.startswith("laptop"):
        # colours x kinds x sizes x backgrounds, all drawn
        assert len(by_caption) == 4 * 2 * len(vocab.sizes) * 2


def test_one_size_vocabulary_names_no_size():
    """laptop_one (the shipped teacher's world): one unnamed size, so captions carry no size word."""
    specs = [sample_world(random.Random(i), 32, 32, FPS, 1.0, vocab="laptop_one") for i in range(40)]
    assert {sh.size for s in specs for sh in s.shapes} == {18}
    texts = {caption(s) for s in specs}
    assert not any(w in t.split() for t in texts for w in ("small", "large"))
    assert all(t.startswith(("a ", "an ")) and "  " not in t for t in texts)
    assert len(vocab_subjects("laptop_one")) == 16


def test_unknown_vocabulary_is_refused():
    with pytest.raises(ValueError, match="laptop"):
        sample_world(random.Random(0), 32, 32, FPS, 1.0, vocab="nope")


def test_data_demo_seed_draws_another_world_set(tmp_path, capsys):
    """`rollforge data demo --seed S`: equal seeds give identical specs, different seeds different ones."""
    from infra.cli import main

    def specs(out, seed):
        argv = ["data", "demo", "--out", str(out), "--world", "3", "--world-size", "32", "--seconds", "0.5",
                "--vocab", "laptop", "--no-real", "--seed", str(seed)]
        assert main(argv) == 0
        return [json.loads(p.read_text())["spec"] for p in sorted((out / "world").glob("*.gt.json"))]

    a, again, other = specs(tmp_path / "a", 11), specs(tmp_path / "b", 11), specs(tmp_path / "c", 12)
    assert len(a) == 3 and a == again
    assert all(x != y for x, y in zip(a, other))
    assert all(d["seed"] == world_seed(11, i) for i, d in enumerate(a))
    assert "seed 12" in capsys.readouterr().out
    argv = ["data", "demo", "--out", str(tmp_path / "d"), "--world", "32", "--world-size", "32", "--seconds", "0.25",
            "--vocab", "laptop", "--no-real", "--seed", "11", "--cover"]
    assert main(argv) == 0
    assert "every caption in turn" in capsys.readouterr().out
    covered = {p.read_text().strip() for p in (tmp_path / "d" / "world").glob("*.txt")}
    assert len(covered) == 32  # laptop: 32 captions, all named (a random draw of 32 names about 20)


def test_cover_names_every_caption_in_shuffled_rounds():
    """run.demo.world_cover: 64 laptop_big worlds name each of the 32 captions twice (a random draw of 64
    misses some); positions and speeds stay random, the draw is deterministic, and without cover the
    worlds are the plain per-index draws."""
    subjects = vocab_subjects("laptop_big")
    assert len(subjects) == len(set(subjects)) == 2 * 4 * 2 * 2
    specs = world_specs(64, 32, 32, FPS, 0.5, seed=3, vocab="laptop_big", cover=True)
    counts: dict[str, int] = {}
    for spec in specs:
        counts[caption(spec)] = counts.get(caption(spec), 0) + 1
    assert len(counts) == 32 and set(counts.values()) == {2}
    assert len({caption(s) for s in specs[:32]}) == 32  # every round is a permutation
    assert covering_subjects(64, 3, "laptop_big")[:32] != subjects  # shuffled, not in vocabulary order
    twins = [s for s in specs if caption(s) == caption(specs[0])]
    assert twins[0].shapes[0].position != twins[1].shapes[0].position
    assert world_specs(64, 32, 32, FPS, 0.5, seed=3, vocab="laptop_big", cover=True) == specs
    plain = world_specs(8, 32, 32, FPS, 0.5, seed=3, vocab="laptop_big")
    assert plain == [sample_world(random.Random(world_seed(3, i)), 32, 32, FPS, 0.5, seed=world_seed(3, i),
                                  vocab="laptop_big") for i in range(8)]
    # several objects: the subject is the first one, the others keep distinct colours
    for spec, sub in zip(world_specs(12, 32, 32, FPS, 0.5, seed=1, vocab="full", cover=True),
                         covering_subjects(12, 1, "full")):
        first = spec.shapes[0]
        assert Subject(spec.background, first.colour, first.size_name, first.kind) == sub
        assert len({s.colour for s in spec.shapes}) == len(spec.shapes)
    with pytest.raises(ValueError, match="subject"):
        sample_world(random.Random(0), 32, 32, FPS, 1.0, vocab="laptop",
                     subject=Subject("black", "white", "small", "circle"))
