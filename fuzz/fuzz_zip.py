"""Fuzz target: the ZIP container reader (csrc/zip_container.c, mapping.c, crc32.c, copy_out.c).

Input: a whole checkpoint file. Each execution writes it to a scratch file and calls
_core.read_checkpoint(path, None, verify_crc=True, factory): zero-copy, or, when the input's last
byte is odd, copying with two threads (the arena and storage pass of copy_out.c). The central
directory, local headers, ZIP64 records, entry names, CRCs and the byteorder entry are parsed
before the pickle runs, so
mutations anywhere in the container reach this code. Seeds: real torch.save checkpoints
(fuzz/make_seeds.py). A finding: a sanitizer report, a crash, or any exception other than
nnunet_export.ExportError (the reader promises CheckpointError for every bad file).
"""
import fuzz_common

core = fuzz_common.load_core()
scratch = fuzz_common.Scratch("input.pth")


def test_one_input(data: bytes) -> None:
    path = scratch.write("input.pth", data)
    try:
        copy = bool(data) and data[-1] & 1
        core.read_checkpoint(path, None, True, fuzz_common.factory, copy, 2)
    except core.ExportError:
        pass


if __name__ == "__main__":
    fuzz_common.run(test_one_input)
