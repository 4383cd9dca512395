"""`rollforge serve` flags: loopback by default, ports and stream limits checked by argparse."""

import pytest

from infra.cli import build_parser, main


def test_defaults_bind_loopback():
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.max_streams, args.checkpoint) == ("127.0.0.1", 8000, 1, None)


@pytest.mark.parametrize("argv, message", [
    (["serve", "--max-streams", "0"], "--max-streams: must be > 0, got 0"),
    (["serve", "--port", "70000"], "--port: must be a port in 0..65535, got 70000"),
    (["serve", "--port", "http"], "--port: not an integer: 'http'"),
])
def test_bad_flags_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_teacher_sampler_is_a_config_error(capsys):
    assert main(["serve", "--config", "configs/tiny.yaml", "sampler.kind=bidirectional"]) == 2
    assert "serve streams without end, so it needs a causal sampler" in capsys.readouterr().err
