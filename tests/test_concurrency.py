"""The C core under threads: concurrent loads of different files give exactly the sequential
results, and a large read releases the GIL so other Python threads keep running."""
from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict

import pytest
import torch

import nnunet_export
import nnunet_fixtures
from nnunet_export import read_checkpoint
from checkpoint_helpers import ALL_KEYS, assert_checkpoint_parity

THREADS = 8
ROUNDS = 3


def _checkpoints(nnunet_fixture):
    """(fixture, checkpoint path) of THREADS different tiny nnU-Net model folders."""
    out = []
    for name in nnunet_fixtures.FIXTURE_NAMES[:THREADS]:
        fixture = nnunet_fixture(name)
        out.append((fixture, nnunet_fixtures.checkpoint_path(fixture)))
    assert len(out) == THREADS, f"only {len(out)} fixtures"
    return out


def _run_together(functions):
    """Runs each function in its own thread, all released at once; returns results in order."""
    barrier = threading.Barrier(len(functions))
    results: list = [None] * len(functions)
    errors: list = []

    def run(index, function):
        try:
            barrier.wait()
            results[index] = function()
        except BaseException as e:  # noqa: BLE001 - reported below with the thread's index
            errors.append((index, e))

    threads = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate(functions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"threads failed: {errors}"
    return results


def test_eight_threads_read_different_checkpoints_like_sequential_reads(nnunet_fixture):
    chosen = _checkpoints(nnunet_fixture)
    assert len({str(p) for _, p in chosen}) == THREADS
    sequential = [read_checkpoint(path, ALL_KEYS) for _, path in chosen]
    for _ in range(ROUNDS):
        concurrent = _run_together([lambda p=path: read_checkpoint(p, ALL_KEYS) for _, path in chosen])
        for ours, reference in zip(concurrent, sequential):
            assert_checkpoint_parity(ours, reference)


def test_eight_threads_read_plans_like_sequential_reads(nnunet_fixture):
    chosen = _checkpoints(nnunet_fixture)
    folders = [(str(f.model_dir), f.configuration) for f, _ in chosen]
    sequential = [nnunet_export.read_model_config(d, c) for d, c in folders]
    for _ in range(ROUNDS):
        concurrent = _run_together([lambda d=d, c=c: nnunet_export.read_model_config(d, c) for d, c in folders])
        assert concurrent == sequential


def test_eight_threads_load_complete_like_sequential_loads(nnunet_fixture):
    chosen = _checkpoints(nnunet_fixture)
    folders = [(f.model_dir, fold_of(path)) for f, path in chosen]
    sequential = [nnunet_export.load_complete(d, folds=(fold,)).state_dict() for d, fold in folders]
    concurrent = _run_together([lambda d=d, fold=fold: nnunet_export.load_complete(d, folds=(fold,)).state_dict()
                                for d, fold in folders])
    for ours, reference in zip(concurrent, sequential):
        assert list(ours) == list(reference)
        for key in reference:
            assert torch.equal(ours[key], reference[key]), key


def fold_of(path) -> int | str:
    fold = os.path.basename(os.path.dirname(path))[len("fold_"):]
    return int(fold) if fold.isdigit() else fold


# ---- the GIL is released during a large read ----

LARGE_BYTES = 200 * 2**20


@pytest.fixture(scope="module")
def large_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("large") / "checkpoint_large.pth"
    weights = OrderedDict(big=torch.arange(LARGE_BYTES // 4, dtype=torch.int32), small=torch.ones(3))
    torch.save({"network_weights": weights, "trainer_name": "nnUNetTrainer", "init_args": {}}, path)
    assert os.path.getsize(path) > LARGE_BYTES
    return path


def _count_while(action) -> tuple[int, float]:
    """Runs `action` in this thread while another thread counts; returns (count, seconds)."""
    stop = threading.Event()
    count = 0
    started = threading.Event()

    def counter():
        nonlocal count
        started.set()
        while not stop.is_set():
            count += 1

    t = threading.Thread(target=counter)
    t.start()
    started.wait()
    begin_count, begin = count, time.perf_counter()
    action()
    elapsed = time.perf_counter() - begin
    progress = count - begin_count
    stop.set()
    t.join()
    return progress, elapsed


def test_large_read_with_crc_releases_the_gil(large_checkpoint):
    # warm the page cache: the measured reads are CRC work, not disk waits
    read_checkpoint(large_checkpoint, ["network_weights"], verify_crc=True)
    checked = []

    def big_reads():
        for _ in range(3):
            w = read_checkpoint(large_checkpoint, ["network_weights"], verify_crc=True)["network_weights"]
            checked.append(int(w["big"][-1]))

    progress, seconds = _count_while(big_reads)
    assert checked == [LARGE_BYTES // 4 - 1] * 3
    # baseline: the same time with this thread only sleeping (sleep releases the GIL)
    baseline, base_seconds = _count_while(lambda: time.sleep(seconds))
    rate, base_rate = progress / seconds, baseline / base_seconds
    print(f"counter: {rate:.0f}/s during 3 CRC reads of 200 MiB ({seconds:.2f} s), {base_rate:.0f}/s free")
    # With the GIL held through the CRC of 200 MiB the counter would stand still for nearly the
    # whole read; with it released it runs at a good fraction of its free rate (sharing one GIL
    # with the Python parts of the read and the CPU with the CRC).
    assert rate >= 0.25 * base_rate, (
        f"counter thread ran at {rate:.0f}/s during 3 reads of {seconds:.2f} s, {base_rate:.0f}/s when free")
