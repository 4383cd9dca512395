"""The ablation's numbers (evaluation/ablation.py) and bench/ablation.py at micro size (random weights)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from evaluation.ablation import FAILURE_METRICS, METRICS, VARIANTS, mean_se, ordering, stream_numbers, summarise

REPO = Path(__file__).resolve().parents[2]


def _load_bench():
    spec = importlib.util.spec_from_file_location("ablation_bench", REPO / "bench" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mean_se():
    assert mean_se([1.0, 3.0]) == {"mean": 2.0, "se": pytest.approx(math.sqrt(2) / math.sqrt(2)), "n": 2}
    assert mean_se([0.5, None, float("nan")]) == {"mean": 0.5, "se": None, "n": 1}
    assert mean_se([]) == {"mean": None, "se": None, "n": 0}


def test_ordering_needs_two_combined_standard_errors():
    def v(mean, se):
        return {"drift": {"mean": mean, "se": se, "n": 8}}
    order = ordering({"full": v(0.1, 0.03), "far": v(0.5, 0.04), "near": v(0.15, 0.04), "gone": v(None, None)})
    assert order["far"] == {"gap": pytest.approx(0.4), "combined_se": pytest.approx(0.05), "holds": True}
    assert order["near"]["holds"] is False  # 0.05 < 2 x 0.05
    assert order["gone"]["holds"] is None


def test_stream_numbers_from_world_and_drift_summaries():
    chunk = {"start_s": 0.0, "stop_s": 1.0}
    world = {"passed": False, "chunks": [{**chunk, "index": k, "start_s": k, "stop_s": k + 1, "passed": k < 4,
                                          "failed_checks": [] if k < 4 else ["motion"] if k == 4 else ["size", "motion"]}
                                         for k in range(6)]}
    drift = {"colour": {"max_abs_deviation_from_first_chunk": {"luma_mean": 12.0}},
             "consistency": {"min_to_first": 0.9}, "quality": {"delta_drift": 0.3}}
    n = stream_numbers({"world": world, "drift": drift})
    assert n == {"drift": 1.0, "world_chunk_pass_rate": pytest.approx(4 / 6), "luma_max_deviation": 12.0,
                 "similarity_min_to_first": 0.9, "quality_drift": 0.3, "count_failure_rate": 0.0,
                 "size_failure_rate": pytest.approx(1 / 6), "colour_failure_rate": 0.0,
                 "motion_failure_rate": pytest.approx(2 / 6), "spurious_failure_rate": 0.0}
    assert set(summarise([n, n])) == set(METRICS)


@pytest.mark.slow  # ~20 s: 5 variants + 3 baselines x 2 prompts of 0.5 s tiny-model streams with the drift metrics
def test_micro_ablation_prints_the_json_shape(tmp_path, capsys):
    bench = _load_bench()
    argv = ["--config", str(REPO / "configs/tiny.yaml"), "--untrained", "--prompts", "2", "--seeds", "3",
            "--seconds", "0.5", "--frechet-resamples", "3", "--out", str(tmp_path), "--json"]
    assert bench.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)  # the one JSON object on stdout
    assert printed == json.loads((tmp_path / "ablation.json").read_text())
    assert list(printed["variants"]) == list(VARIANTS)
    for metrics in printed["variants"].values():
        for name in ("drift", "luma_max_deviation", "similarity_min_to_first", "quality_drift", *FAILURE_METRICS):
            assert set(metrics[name]) == {"mean", "se", "n"} and metrics[name]["n"] == 2
        assert 0.0 <= metrics["drift"]["mean"] <= 1.0 and 0.0 <= metrics["motion_failure_rate"]["mean"] <= 1.0
    assert set(printed["ordering_vs_full"]) == set(VARIANTS) - {"full"}
    assert set(printed["baselines"]) == {"ode_init", "ode_init_block_ar", "teacher"}
    baselines = printed["baselines"]
    for stats in [*printed["variants"].values(), baselines["ode_init"], baselines["ode_init_block_ar"]]:
        assert stats["frechet_to_teacher"]["mean"] >= 0 and stats["frechet_to_teacher"]["n"] == 2
    assert set(printed["dmd_beats_ode_init"]) == {"frechet_to_teacher", "world_chunk_pass_rate", "frechet_gap",
                                                  "frechet_over_floor", "block_ar"}
    # the like-for-like block-AR comparison: the DMD student sampled block_ar vs the ODE init sampled block_ar
    block_ar = printed["dmd_beats_ode_init"]["block_ar"]
    assert set(block_ar) == {"frechet_to_teacher", "world_chunk_pass_rate", "frechet_gap"}
    assert block_ar["frechet_gap"]["resamples"] == 3 and block_ar["frechet_gap"]["mean"] == pytest.approx(
        printed["variants"]["no_rf_inference"]["frechet_to_teacher"]["mean"]
        - printed["baselines"]["ode_init_block_ar"]["frechet_to_teacher"]["mean"])
    assert printed["baselines"]["ode_init_block_ar"]["frechet_to_teacher"]["se"] is not None
    # the bootstrapped models carry errors; the floor is the teacher's clips of seeds the run did not use
    floor = printed["baselines"]["teacher"]["frechet_to_teacher"]
    assert floor["mean"] >= 0 and floor["se"] is not None and floor["seeds"] == [4]
    assert printed["variants"]["full"]["frechet_to_teacher"]["se"] is not None
    assert printed["variants"]["no_sink"]["frechet_to_teacher"]["se"] is None
    gap = printed["dmd_beats_ode_init"]["frechet_gap"]
    assert gap["resamples"] == 3 and gap["se"] >= 0 and 0 <= gap["lower_share"] <= 1
    assert set(printed["dmd_beats_ode_init"]["frechet_over_floor"]) == {"full", "ode_init"}
    assert (tmp_path / "eval" / "teacher_floor" / "seed4" / "videos" / "bidirectional_0.mp4").is_file()
    assert printed["baselines"]["teacher"]["world_chunk_pass_rate"]["n"] == 2 and printed["seeds"] == [3]
    merged = json.loads((tmp_path / "metrics.json").read_text())
    assert len(merged["samplers"]["no_sink"]["runs"]) == 2 and (tmp_path / "plots" / "world_pass_rate.png").is_file()
    assert [r["video"] for r in merged["samplers"]["ode_init_block_ar"]["runs"]][0].endswith("block_ar_0.mp4")
    for name in VARIANTS:
        assert (tmp_path / merged["samplers"][name]["strip"]).is_file()
        assert all((tmp_path / r["video"]).is_file() for r in merged["samplers"][name]["runs"])
    resolved = json.loads(json.dumps(printed["variant_settings"]))
    assert resolved["no_sink"]["sink"] is False and resolved["no_rf_training"]["p_self_forcing"] == 1.0
    # no_sink's student is trained without the sink too; every other variant's with it
    assert {n: v["trained_with_sink"] for n, v in resolved.items()} == {n: n != "no_sink" for n in VARIANTS}
    assert set(printed["students"]) == {"rf", "rf_no_sink", "sf"} and printed["students"]["rf_no_sink"]["sink"] is False
