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
