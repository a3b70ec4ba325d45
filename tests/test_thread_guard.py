"""ThreadGuard restores torch's process-wide settings on success and on every error path."""
import os
import threading

import pytest
import torch

import nnunet_export
from nnunet_export import _core


def process_state():
    return (
        torch.get_num_threads(),
        torch.get_num_interop_threads(),
        torch.backends.cudnn.benchmark,
        torch.is_grad_enabled(),
        torch.get_default_dtype(),
    )


def test_restores_everything_after_changes_inside():
    before = process_state()
    with _core.ThreadGuard():
        torch.set_num_threads(1)
        torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
        torch.set_grad_enabled(False)
        torch.set_default_dtype(torch.float64)
        assert process_state() != before
    assert process_state() == before


def test_restores_when_the_block_raises_and_lets_the_error_through():
    before = process_state()
    with pytest.raises(KeyError, match="boom"):
        with _core.ThreadGuard(num_threads=1):
            assert torch.get_num_threads() == 1
            torch.set_default_dtype(torch.float64)
            raise KeyError("boom")
    assert process_state() == before


def test_num_threads_bounds_threads_inside_only():
    before = torch.get_num_threads()
    with _core.ThreadGuard(num_threads=1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -3, 1.5, "2", True])
def test_rejects_bad_num_threads(bad):
    with pytest.raises((TypeError, ValueError), match="num_threads must be a positive int"):
        _core.ThreadGuard(num_threads=bad)


def test_not_reentrant():
    guard = _core.ThreadGuard()
    with guard:
        with pytest.raises(RuntimeError, match="not re-entrant"):
            guard.__enter__()


def test_stable_abi_reading_matches_python_api():
    # torch 2.13 exports torch_get_num_threads; older torch leaves it unbound (None).
    lib = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    bound = _core.bind_torch_stable_abi(lib)
    if not bound:
        pytest.skip("this torch has no stable C ABI thread query")
    with _core.ThreadGuard(num_threads=1):
        assert _core.stable_num_threads() == 1 == torch.get_num_threads()
    assert _core.stable_num_threads() == torch.get_num_threads()


def test_guard_in_another_thread_leaves_main_thread_state():
    # Grad mode and (with OpenMP) the intra-op thread count are per thread, so the worker's own
    # view is checked there; the default dtype and cudnn.benchmark are process-wide, so the main
    # thread sees them change while the worker is inside the guard and restored once it left.
    before = process_state()
    entered, release = threading.Event(), threading.Event()
    seen = {}
    errors = []

    def work():
        try:
            worker_before = process_state()
            with _core.ThreadGuard(num_threads=1):
                torch.set_grad_enabled(False)
                torch.set_default_dtype(torch.float64)
                torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
                seen["worker_inside"] = process_state()
                entered.set()
                release.wait(timeout=30)
            seen["worker_before"], seen["worker_after"] = worker_before, process_state()
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)
        finally:
            entered.set()

    t = threading.Thread(target=work)
    t.start()
    entered.wait(timeout=30)
    inside = process_state()
    release.set()
    t.join()
    assert not errors
    assert inside[2] != before[2] and inside[4] == torch.float64, inside
    assert seen["worker_inside"][0] == 1 and seen["worker_inside"][3] is False, seen
    assert seen["worker_after"] == seen["worker_before"]
    assert process_state() == before
