"""Every benchmarks/bench_*.py keeps the runner's contract (benchmarks/timing.py): a module-level
run(size) and REPEATS dict. Checked from the source, without importing or running anything;
`python benchmarks/run.py --smoke` (CI) runs them."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
MODULES = sorted(BENCHMARKS.glob("bench_*.py"))


def test_there_are_benchmarks():
    assert len(MODULES) >= 5, MODULES


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_module_has_run_and_repeats(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert "run" in functions, f"{path.name} has no module-level run(size)"
    args = functions["run"].args
    assert [a.arg for a in args.args][:1] == ["size"] and len(args.args) - len(args.defaults) <= 1, path.name
    assigned = {target.id for node in tree.body if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Name)}
    assert "REPEATS" in assigned, f"{path.name} has no module-level REPEATS"


def test_smoke_sets_every_repeat_count_to_one(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("run", None)
    import run as runner  # benchmarks/run.py

    assert runner.one_repeat({"tiny": (3, 30, 5), "realistic": 5}) == {"tiny": (1, 1, 1), "realistic": 1}
    sys.modules.pop("run", None)
