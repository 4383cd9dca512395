"""Imports flow one way: pipeline <- data <- training <- evaluation <- infra orchestration."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ORDER = ["pipeline", "data", "training", "evaluation", "infra"]
# infra's low-level helpers every layer may use
SHARED = {"infra.config", "infra.tracking", "infra.distributed", "infra.logs"}


def imports_of(path: Path, package: str) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve inside the package
                base = ".".join(path.relative_to(REPO).with_suffix("").parts[: -node.level])
                out.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                out.add(node.module)
    return out


def test_layers_import_only_downward():
    problems = []
    for rank, pkg in enumerate(ORDER):
        for path in (REPO / pkg).rglob("*.py"):
            for mod in imports_of(path, pkg):
                top = mod.split(".")[0]
                if top not in ORDER or top == pkg:
                    continue
                allowed = ORDER.index(top) < rank or any(mod == s or mod.startswith(s + ".") for s in SHARED)
                if pkg == "pipeline" or not allowed:
                    problems.append(f"{path.relative_to(REPO)} imports {mod}")
    assert not problems, "\n".join(problems)


def test_the_check_sees_a_violation(tmp_path):
    bad = REPO / "pipeline" / "_probe_violation.py"
    bad.write_text("from training import loop\n")
    try:
        assert "training" in imports_of(bad, "pipeline")
    finally:
        bad.unlink()
