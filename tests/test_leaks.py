"""Leak checks of the C core: 1000 load-and-release cycles leave resident memory flat and create
no lasting Python objects.

Each check warms up (caches, free lists, lazily imported modules), then measures, runs 1000 more
cycles and measures again:
  * resident set size (/proc/self/statm, after gc and malloc_trim) within 5% of the warm value;
    this sees malloc'd memory of the C core and of cJSON as well as leaked file mappings;
  * the number of objects the garbage collector tracks (leaked containers);
  * tracemalloc's traced bytes (every Python object and PyMem allocation, containers or not)
    over the second half of the cycles: at most 40 bytes per cycle. A leaked object per cycle
    grows traced memory linearly by its size (a tuple, str, dict, array or tensor is 48+ bytes;
    a lone leaked int or float would slip through); what
    does grow without a leak (CPython and NumPy caches filling up: about 35 KiB over the first
    1500 read_checkpoint cycles, flattening out) grows mostly during the first half;
  * open file descriptors and mappings of the file (a leaked nx_mapping keeps both).
"""
from __future__ import annotations

import ctypes
import gc
import os
import re
import tracemalloc

import pytest
import nnunet_export
import nnunet_fixtures
from nnunet_export import CheckpointError, PlansError, UnsafeCheckpointError, _core, read_checkpoint
from checkpoint_helpers import ALL_KEYS, p_top, save_small_checkpoint, zip_with_pickle

CYCLES = 1000
WARMUP = 100
RSS_TOLERANCE = 0.05
TRACED_BYTES_PER_CYCLE = 40
GC_OBJECT_SLACK = 20  # gc-tracked objects created once by unrelated machinery (warnings, caches)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _settle() -> None:
    gc.collect()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap pages, so RSS means live memory
    except (OSError, AttributeError):
        pass


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _mappings_of(path) -> int:
    real = os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if line.rstrip().endswith(real))


def _measure_cycles(cycle, *, path=None, traced=True):
    """Runs `cycle` WARMUP then CYCLES times; returns a dict of before/after measurements."""
    for _ in range(WARMUP):
        cycle()
    _settle()
    before = {"rss": _rss_bytes(), "gc": len(gc.get_objects()), "fds": _open_fds()}
    if traced:
        tracemalloc.start()
    try:
        for i in range(CYCLES):
            cycle()
            if traced and i + 1 == CYCLES // 2:
                _settle()
                before["traced"] = tracemalloc.get_traced_memory()[0]
        _settle()
        after = {"traced": tracemalloc.get_traced_memory()[0]} if traced else {}
    finally:
        if traced:
            tracemalloc.stop()
    _settle()
    after.update(rss=_rss_bytes(), gc=len(gc.get_objects()), fds=_open_fds())
    if path is not None:
        after["mappings"] = _mappings_of(path)
    return before, after


def _assert_flat(before, after, what):
    print(f"{what}: before {before}, after {after}")
    rss_growth = (after["rss"] - before["rss"]) / before["rss"]
    assert rss_growth <= RSS_TOLERANCE, (
        f"{what}: resident memory grew {rss_growth:.1%} over {CYCLES} cycles "
        f"({before['rss'] >> 20} -> {after['rss'] >> 20} MiB)")
    assert after["gc"] - before["gc"] <= GC_OBJECT_SLACK, (
        f"{what}: {after['gc'] - before['gc']} more gc-tracked objects after {CYCLES} cycles")
    if "traced" in before:
        growth = after["traced"] - before["traced"]
        assert growth <= TRACED_BYTES_PER_CYCLE * (CYCLES - CYCLES // 2), (
            f"{what}: tracemalloc's traced memory grew {growth} bytes over the last "
            f"{CYCLES - CYCLES // 2} of {CYCLES} cycles")
    assert after["fds"] == before["fds"], f"{what}: file descriptors leaked"
    assert after.get("mappings", 0) == 0, f"{what}: the checkpoint is still mapped after release"


@pytest.fixture(scope="module")
def tiny(nnunet_fixture):
    return nnunet_fixture("3d_fullres")


@pytest.mark.parametrize("copy", [False, True], ids=["zero-copy", "copy"])
def test_read_checkpoint_cycles_do_not_leak(tiny, copy):
    path = nnunet_fixtures.checkpoint_path(tiny)

    def cycle():
        checkpoint = read_checkpoint(path, ALL_KEYS, copy=copy, threads=2)
        # touch every tensor, so storages really get built and released
        assert sum(t.numel() for t in checkpoint["network_weights"].values()) > 0
        del checkpoint

    before, after = _measure_cycles(cycle, path=path)
    _assert_flat(before, after, "read_checkpoint")


def test_load_complete_cycles_do_not_leak(tiny):
    path = nnunet_fixtures.checkpoint_path(tiny)

    def cycle():
        model = nnunet_export.load_complete(tiny.model_dir, folds=tiny.folds)
        assert model.info.folds == tuple(tiny.folds)
        del model

    # tracemalloc would make 1000 network constructions several times slower: RSS and gc counts
    # (a leaked network is megabytes of parameters and hundreds of gc objects) suffice here.
    before, after = _measure_cycles(cycle, path=path, traced=False)
    _assert_flat(before, after, "load_complete")


def test_read_plans_cycles_do_not_leak(tiny):
    plans = os.path.join(tiny.model_dir, "plans.json")
    dataset = os.path.join(tiny.model_dir, "dataset.json")

    def cycle():
        assert _core.read_plans(plans, dataset, tiny.configuration)

    before, after = _measure_cycles(cycle)
    _assert_flat(before, after, "read_plans")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """Files that fail at different depths of the readers (error paths leak most easily)."""
    folder = tmp_path_factory.mktemp("bad")
    good = folder / "good.pth"
    save_small_checkpoint(good, features=(2, 4))
    raw = good.read_bytes()
    files = {
        "truncated": raw[: len(raw) // 2],
        "not_a_zip": b"PK\x03\x04" + b"\x00" * 200,
        "bad_pickle": zip_with_pickle(b"\x80\x02}(X\x01\x00\x00\x00k]]s."),
        "unsafe_global": zip_with_pickle(p_top(network_weights=b"cposix\nsystem\n(X\x01\x00\x00\x00xtR")),
        "missing_storage": zip_with_pickle(p_top(network_weights=(
            b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\n"
            b"X\x01\x00\x00\x007X\x03\x00\x00\x00cpuJ\x04\x00\x00\x00tQJ\x00\x00\x00\x00(J\x04\x00"
            b"\x00\x00t(J\x01\x00\x00\x00t\x89ccollections\nOrderedDict\n)RtR"))),
    }
    # Each file fails at its own depth of the reader; the exact error proves it got there.
    not_a_zip = ("not a ZIP archive (no end-of-central-directory record in the last 65557 bytes); "
                 "torch.save files are ZIP archives")
    expected = {
        "truncated": (CheckpointError, not_a_zip),
        "not_a_zip": (CheckpointError, not_a_zip),
        "bad_pickle": (CheckpointError, "entry 'archive/data.pkl' byte 12: opcode SETITEM: target is not a dict "
                                        "or OrderedDict"),
        "unsafe_global": (UnsafeCheckpointError, "network_weights needs global 'posix.system', which is not in "
                                                 "the allowlist; nothing from the file was executed"),
        "missing_storage": (CheckpointError, "network_weights: storage 'data/7' (persistent id key '7') is "
                                             "missing from the archive"),
    }
    cases = []
    for name, data in files.items():
        path = folder / f"{name}.pth"
        path.write_bytes(data)
        error, message = expected[name]
        cases.append((path, error, f"^{re.escape(f'checkpoint {str(path)!r}: {message}')}$"))
    plans = folder / "plans.json"
    plans.write_text('{"configurations": {"3d_fullres": {"architecture": 7}}}')
    return cases, plans


def test_error_paths_do_not_leak(bad_files, tiny):
    cases, plans = bad_files
    dataset = os.path.join(tiny.model_dir, "dataset.json")
    plans_message = f"^{re.escape(str(plans))}: dataset_name: missing required key$"

    def cycle():
        for path, error, message in cases:
            with pytest.raises(error, match=message) as info:
                read_checkpoint(path, ALL_KEYS)
            assert type(info.value) is error
        with pytest.raises(PlansError, match=plans_message):
            _core.read_plans(str(plans), dataset, "3d_fullres")

    before, after = _measure_cycles(cycle)
    _assert_flat(before, after, "failing reads")
