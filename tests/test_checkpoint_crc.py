"""The C core's CRC-32 (PCLMULQDQ / VPCLMULQDQ folding with a zlib tail) equals zlib.crc32."""
from __future__ import annotations

import os
import random
import zlib

from nnunet_export import _core


def test_crc32_matches_zlib_on_every_small_length_and_offset():
    data = os.urandom(4096)
    for length in range(0, 1100):
        offset = length % 61
        chunk = data[offset:offset + length]
        assert _core._crc32(chunk) == zlib.crc32(chunk), length


def test_crc32_matches_zlib_on_random_sizes_and_start_values():
    rng = random.Random(0)
    data = os.urandom(1 << 20)
    for _ in range(300):
        start, length, value = rng.randrange(64), rng.randrange(1 << 20 - 1), rng.getrandbits(32)
        chunk = memoryview(data)[start:start + length]
        assert _core._crc32(chunk, value) == zlib.crc32(chunk, value)


def test_crc32_streams_like_zlib():
    data = os.urandom(10_000)
    crc = 0
    for piece in (data[:300], data[300:5000], data[5000:]):
        crc = _core._crc32(piece, crc)
    assert crc == zlib.crc32(data)
