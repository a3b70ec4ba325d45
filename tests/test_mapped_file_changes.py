"""A checkpoint file that changes while tensors over its mapping are alive.

read_checkpoint maps the file MAP_PRIVATE and its tensors (and, through load_weights, the
parameters load_complete returns) are views of that mapping. What is safe follows from POSIX
file-mapping semantics, and is what these tests pin down:

  * replacing the file by a NEW file + rename (atomic save) or deleting it: safe. The mapping
    keeps the old inode alive; tensors keep their values.
  * truncating or rewriting the SAME file in place (``open(path, "wb")``, which is what
    ``torch.save(obj, path)`` does, e.g. nnU-Net saving checkpoint_best.pth again while a model
    from it is loaded): not safe for zero-copy tensors. Pages past the new end raise SIGBUS on
    access and pages not yet copied on write show the new bytes (strict xfails pin that down).
    ``read_checkpoint(copy=True)`` copies the storages out of the mapping and is safe, and
    ``load_complete`` uses it by default: a loaded model survives every change
    (``load_complete(copy=False)`` keeps the mapping and shares its hazard).

Every scenario runs in a child process: a SIGBUS there fails one test, not the suite.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

import nnunet_export

TESTS = os.path.dirname(os.path.abspath(__file__))
KNOWN_UNSAFE = (
    "read_checkpoint maps the file MAP_PRIVATE without copying; a file truncated or rewritten in "
    "place under a live mapping gives SIGBUS / changed values (docs/fuzzing.md, 'Mapped files')")


class UnsafeChange(AssertionError):
    """The child died from a signal, or saw tensor values change (exit status CHANGED)."""


CHANGED = 3
UNSAFE = pytest.mark.xfail(strict=True, raises=UnsafeChange, reason=KNOWN_UNSAFE)

PRELUDE = textwrap.dedent("""
    import os, sys
    import torch
    import nnunet_export
    from nnunet_export import read_checkpoint
    from checkpoint_helpers import save_small_checkpoint

    def snapshot(tensors):
        return {k: v.clone() for k, v in tensors.items()}

    def same(tensors, reference):
        return all(torch.equal(tensors[k], reference[k]) for k in reference)

    def require(condition, what):
        if not condition:
            print("CHANGED:", what)
            sys.exit(3)  # CHANGED
""")


def _run_child(body: str, **params) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(nnunet_export.__file__)), TESTS,
                                         env.get("PYTHONPATH", "")])
    # Under scripts/sanitize.sh the child inherits the ASan runtime: let SIGBUS kill it plainly.
    if "ASAN_OPTIONS" in env:
        env["ASAN_OPTIONS"] += ":handle_sigbus=0"
    code = PRELUDE + "\n".join(f"{k} = {v!r}" for k, v in params.items()) + "\n" + body
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def _assert_ok(result: subprocess.CompletedProcess) -> None:
    if result.returncode < 0:
        name = signal.Signals(-result.returncode).name
        raise UnsafeChange(f"child process killed by {name}\n{result.stderr[-2000:]}")
    if result.returncode == CHANGED:
        raise UnsafeChange(f"values changed under the reader: {result.stdout[-2000:]}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("OK"), result.stdout + result.stderr[-2000:]


@pytest.fixture
def model_copy(tmp_path, nnunet_fixture):
    """A private copy of a tiny nnU-Net model folder (the fixture cache is never modified)."""
    fixture = nnunet_fixture("3d_fullres")
    target = tmp_path / "model"
    shutil.copytree(fixture.model_dir, target, ignore=shutil.ignore_patterns("*.png", "*.txt"))
    fold = f"fold_{fixture.folds[0]}"
    return str(target), fixture.folds[0], str(target / fold / "checkpoint_final.pth")


READ_THEN_CHANGE = textwrap.dedent("""
    save_small_checkpoint(path, features=(4, 8, 16), seed=0)
    weights = read_checkpoint(path, ["network_weights"], copy=COPY)["network_weights"]
    reference = snapshot(weights)
    other = path + ".new"
    save_small_checkpoint(other, features=(2, 4), seed=1)  # different size and content
    change(path, other)
    total = sum(float(v.double().sum()) for v in weights.values())  # touches every page
    require(same(weights, reference), "tensor values changed under the reader")
    next(iter(weights.values())).add_(1)  # still writable (copy on write)
    print("OK")
""")

CHANGES = {
    "rename": "def change(path, other):\n    os.replace(other, path)\n",
    "unlink": "def change(path, other):\n    os.unlink(path)\n",
    "truncate": "def change(path, other):\n    os.truncate(path, 0)\n",
    "rewrite_in_place": ("def change(path, other):\n"
                         "    data = open(other, 'rb').read()\n"
                         "    with open(path, 'r+b') as f:\n"
                         "        f.truncate(0); f.write(data)\n"),
    "torch_save_in_place": ("def change(path, other):\n"
                            "    torch.save({'network_weights': {'w': torch.zeros(3)}}, path)\n"),
}


@pytest.mark.parametrize("change", [
    "rename",
    "unlink",
    pytest.param("truncate", marks=UNSAFE),
    pytest.param("rewrite_in_place", marks=UNSAFE),
    pytest.param("torch_save_in_place", marks=UNSAFE),
])
def test_read_checkpoint_tensors_when_the_file_changes(tmp_path, change):
    body = "COPY = False\n" + CHANGES[change] + READ_THEN_CHANGE
    _assert_ok(_run_child(body, path=str(tmp_path / "checkpoint_final.pth")))


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_copied_tensors_survive_every_change(tmp_path, change):
    body = "COPY = True\n" + CHANGES[change] + READ_THEN_CHANGE
    _assert_ok(_run_child(body, path=str(tmp_path / "checkpoint_final.pth")))


LOAD_THEN_CHANGE = textwrap.dedent("""
    model = nnunet_export.load_complete(model_dir, folds=(fold,), copy=COPY)
    x = torch.randn((1, model.info.config.num_input_channels, *model.info.config.patch_size),
                    generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(x)
    change(path)
    with torch.no_grad():
        after = model(x)
    require(torch.equal(before, after), "the loaded model's output changed with the file")
    print("OK")
""")

MODEL_CHANGES = {
    "rename": ("def change(path):\n"
               "    with open(path + '.new', 'wb') as f: f.write(b'garbage')\n"
               "    os.replace(path + '.new', path)\n"),
    "truncate": "def change(path):\n    os.truncate(path, 0)\n",
    "torch_save_in_place": ("def change(path):\n"
                            "    torch.save({'network_weights': {'w': torch.zeros(3)}}, path)\n"),
}


@pytest.mark.parametrize("change", sorted(MODEL_CHANGES))
def test_load_complete_model_when_the_checkpoint_changes(model_copy, change):
    model_dir, fold, path = model_copy
    _assert_ok(_run_child(MODEL_CHANGES[change] + LOAD_THEN_CHANGE, model_dir=model_dir, fold=fold, path=path,
                          COPY=True))


@pytest.mark.parametrize("change", [
    "rename",
    pytest.param("truncate", marks=UNSAFE),
    pytest.param("torch_save_in_place", marks=UNSAFE),
])
def test_load_complete_without_copy_shares_the_mapping_hazard(model_copy, change):
    """copy=False is documented as unsafe for files rewritten in place: pin that down."""
    model_dir, fold, path = model_copy
    _assert_ok(_run_child(MODEL_CHANGES[change] + LOAD_THEN_CHANGE, model_dir=model_dir, fold=fold, path=path,
                          COPY=False))
