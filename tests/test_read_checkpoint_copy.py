"""read_checkpoint(copy=True): storages copied into one block of memory by several threads,
independent of the file; and the `threads` argument of both reading modes."""
from __future__ import annotations

import gc
from collections import OrderedDict

import pytest
import torch

from nnunet_export import read_checkpoint
from checkpoint_helpers import ALL_KEYS, assert_checkpoint_parity, file_mappings, save_small_checkpoint


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("copy") / "checkpoint_final.pth"
    save_small_checkpoint(path, features=(4, 8, 16, 32))
    return path


@pytest.fixture(scope="module")
def reference(ckpt_path):
    return torch.load(ckpt_path, map_location="cpu", weights_only=False)


def _storages(value, out):
    if isinstance(value, torch.Tensor):
        storage = value.untyped_storage()
        out[storage.data_ptr()] = storage.nbytes()
    elif isinstance(value, dict):
        for item in value.values():
            _storages(item, out)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _storages(item, out)
    return out


@pytest.mark.parametrize("copy", [False, True])
@pytest.mark.parametrize("threads", [1, 2, 3, 16])
def test_every_mode_and_thread_count_matches_torch_load(ckpt_path, reference, copy, threads):
    assert_checkpoint_parity(read_checkpoint(ckpt_path, ALL_KEYS, copy=copy, threads=threads), reference)


def test_copied_storages_share_one_aligned_block_outside_the_file_mapping(ckpt_path):
    result = read_checkpoint(ckpt_path, ALL_KEYS, copy=True, threads=2)
    storages = _storages(result, {})
    assert len(storages) > 10
    assert file_mappings(ckpt_path) == [], "copy=True keeps a mapping of the file"
    first = min(storages)
    last = max(ptr + n for ptr, n in storages.items())
    # One block: storages packed at 64-byte boundaries, in the order the pickle reaches them.
    assert last - first <= sum(storages.values()) + 64 * len(storages)
    assert all(ptr % 64 == 0 for ptr in storages)


def test_copied_tensors_are_independent_and_keep_their_block_alive(ckpt_path, reference):
    weights = read_checkpoint(ckpt_path, ["network_weights"], copy=True)["network_weights"]
    name, kept = next((k, v) for k, v in weights.items() if v.numel() > 4)
    del weights
    gc.collect()
    assert torch.equal(kept, reference["network_weights"][name])
    kept.add_(1)  # writable, and the next read is unaffected
    again = read_checkpoint(ckpt_path, ["network_weights"], copy=True)["network_weights"]
    assert torch.equal(again[name], reference["network_weights"][name])


def test_copied_views_still_share_their_storage(tmp_path):
    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    data = OrderedDict(base=base, view=base[1], strided=base[:, ::2, 1::2], other=torch.ones(7))
    path = tmp_path / "views.pth"
    torch.save({"network_weights": data, "trainer_name": "t", "init_args": {}}, path)
    ours = read_checkpoint(path, ["network_weights"], copy=True)
    assert_checkpoint_parity(ours, torch.load(path, weights_only=False))
    w = ours["network_weights"]
    w["base"][1, 0, 0] = -1.0
    assert w["view"][0, 0] == -1.0


def test_a_checkpoint_without_tensors_reads_in_every_mode(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({"network_weights": {}, "trainer_name": "t", "init_args": {"fold": 0}}, path)
    for copy in (False, True):
        assert read_checkpoint(path, copy=copy)["network_weights"] == {}


def test_threads_default_follows_torch(ckpt_path, reference, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert_checkpoint_parity(read_checkpoint(ckpt_path, ALL_KEYS, copy=True), reference)


@pytest.mark.parametrize("threads", [0, -1, True, 1.5, "2"])
def test_bad_thread_counts_are_refused(ckpt_path, threads):
    with pytest.raises(ValueError, match=r"threads must be an int >= 1 or None, got "):
        read_checkpoint(ckpt_path, copy=True, threads=threads)
