"""infra.logs: library records go to RUN/logs/libraries.log; only errors reach the library's console."""

import io
import logging
import warnings

import pytest

from infra.logs import reapply, route_library_logs, unroute


def _console(name: str) -> io.StringIO:
    buf = io.StringIO()
    logger = logging.getLogger(name)
    logger.addHandler(logging.StreamHandler(buf))
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return buf


@pytest.fixture
def routed(tmp_path):
    yield route_library_logs(tmp_path / "run")
    unroute()


def test_library_chatter_goes_to_the_file_errors_to_both(routed, tmp_path):
    path = routed
    # a handler attached after routing (DeepSpeed attaches its own on import) still only sees errors
    ds = _console("DeepSpeed")
    logging.getLogger("DeepSpeed").warning("Setting accelerator to CPU")
    logging.getLogger("DeepSpeed").error("a real failure")
    # a logger created later (Ray Data's, on import) is filtered once reapply runs
    data = _console("ray.data.test_logs")
    reapply()
    logging.getLogger("ray.data.test_logs").info("Starting execution of Dataset")
    # a child created after reapply propagates to its parent's console handler (Ray Data's executor)
    logging.getLogger("ray.data.test_logs.executor").warning("Execution plan of Dataset")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("`ray_remote_args` is deprecated", DeprecationWarning, stacklevel=1)
    ours = _console("rollforge.test_logs")
    logging.getLogger("rollforge.test_logs").info("teacher: done")
    text = path.read_text()
    assert path == (tmp_path / "run/logs/libraries.log").resolve()
    for line in ("Setting accelerator to CPU", "a real failure", "Starting execution of Dataset", "ray_remote_args",
                 "Execution plan of Dataset"):
        assert line in text, line
    assert ds.getvalue() == "a real failure\n" and data.getvalue() == ""
    assert text.count("a real failure") == 1  # filed once, though both the logger and its handler filter
    assert ours.getvalue() == "teacher: done\n" and "teacher: done" not in text
