"""Running a script in a fresh Python process that cannot import nnunet_export, nnunetv2 or
dynamic_network_architectures: what an exported file must work in.

The script body runs after a meta-path blocker is installed and checked; afterwards the process
fails if any blocked package was imported anyway.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BLOCKED = ("nnunetv2", "nnunet_export", "dynamic_network_architectures")

_PRELUDE = rf"""
import importlib.abc, sys
BLOCKED = {BLOCKED!r}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked in the fresh process: {{name}}")
        return None

sys.meta_path.insert(0, Blocker())
for name in BLOCKED:  # the blocker works: nothing of ours is importable here
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{{name}} was importable in the fresh process")
"""

_EPILOGUE = r"""
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
if leaked:
    raise SystemExit(f"imported in the fresh process: {leaked}")
"""


def run_fresh(body: str, *args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs `body` (Python source; `sys.argv[1:]` are `args`) in a fresh isolated interpreter
    with the blocker installed; returns the completed process (the caller asserts on it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run([sys.executable, "-I", "-c", _PRELUDE + body + _EPILOGUE, *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
