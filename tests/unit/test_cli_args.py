"""Command-line parsing: overrides may be mixed with flags; unknown flags are still refused."""

import pytest
import yaml

from infra.cli import main


def test_overrides_mixed_with_flags(capsys):
    assert main(["config", "run.learners=3", "--config", "configs/demo.yaml", "ray.num_cpus=1", "train.seed=7"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["run"]["learners"], cfg["ray"]["num_cpus"], cfg["train"]["seed"]) == (3, 1, 7)


@pytest.mark.parametrize("argv", [["config", "--bogus"], ["config", "a=1", "--config", "configs/demo.yaml", "-x=2"]])
def test_unknown_flags_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_a_word_that_is_not_an_override_is_a_config_error(capsys):
    assert main(["config", "--config", "configs/demo.yaml", "stray"]) == 2
    assert "must look like key.sub=value" in capsys.readouterr().err


BAD_NUMBERS = [
    (["generate", "--prompt", "p", "--out", "x.mp4", "--seconds", "-5"], "--seconds: must be > 0, got -5"),
    (["generate", "--prompt", "p", "--out", "x.mp4", "--seconds", "nan"], "--seconds: must be finite"),
    (["bench", "stream", "--seconds", "0"], "--seconds: must be > 0"),
    (["data", "demo", "--out", "d", "--world", "-1"], "--world: must be >= 0"),
    (["data", "demo", "--out", "d", "--world-size", "0"], "--world-size: must be > 0"),
    (["data", "shard", "--input", "i", "--out", "o", "--shard-size", "0"], "--shard-size: must be > 0"),
    (["eval", "--chunk-seconds", "-1"], "--chunk-seconds: must be > 0"),
    (["eval", "--world-count", "0"], "--world-count: must be > 0"),
    (["train", "--stage", "teacher", "--run-dir", "r", "--nproc", "0"], "--nproc: must be > 0"),
    (["train", "--stage", "teacher", "--run-dir", "r", "--max-steps", "2.5"], "--max-steps: not an integer"),
    (["export", "--run-dir", "r", "--out", "o", "--step", "-3"], "--step: must be >= 0"),
]


@pytest.mark.parametrize("argv,message", BAD_NUMBERS, ids=[b[1].split(":")[0] + "@" + b[0][0] for b in BAD_NUMBERS])
def test_numbers_out_of_range_are_refused_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err, err


def test_export_of_a_run_without_checkpoints_is_one_clear_line(tmp_path, capsys):
    assert main(["export", "--run-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rollforge: error: export:") and "a training run dir?" in err[-1]
    assert not any("Traceback" in line for line in err)
