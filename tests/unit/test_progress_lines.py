"""infra.progress_lines: the driver's progress lines for `rollforge train --ray`, read from progress.json."""

import io
import json
import time

from infra.progress_lines import ProgressLines, format_line


def test_format_line():
    p = {"stage": "teacher", "step": 120, "metrics": {"loss": 0.08123}}
    assert format_line(p, 4000, None) == "teacher step 120/4000 (3 %)  loss 0.08123"
    assert format_line(p, 4000, 0.5).endswith("0.5 s/step  eta 32:20")
    p["metrics"]["loss_mean"] = 0.0712  # the trainer's running mean wins over one step's loss
    assert format_line(p, 4000, None) == "teacher step 120/4000 (3 %)  mean loss 0.0712"


def test_prints_when_the_step_moves(tmp_path):
    out = io.StringIO()
    with ProgressLines(tmp_path, 10, every_s=0.05, stream=out):
        for step in (2, 2, 5):
            (tmp_path / "progress.json").write_text(json.dumps({"stage": "distill", "step": step, "metrics": {}}))
            time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["distill step 2/10", "distill step 5/10"]
    assert "s/step" in lines[1]
