"""Fuzz target: the pickle VM and materialisation (csrc/unpickler.c, unpickler_objects.c, materialize.c,
tensor_rebuild.c, checkpoint.c).

Input: the bytes of data.pkl. Each execution packs them with Python's zipfile into a fixed, valid
torch.save-like archive (correct CRCs, so verify_crc stays on) whose other entries -- byteorder,
version and the storages data/0, data/1, ... -- come from the template checkpoint
fuzz/work/seeds/pickle_template.pth that make_seeds.py wrote. The pickle of that template is a
seed, so mutations start from a pickle whose storages all match. read_checkpoint runs with the
default keys, then (when the VM got through) with the other keys nnU-Net writes, so the optimizer
state, logging (NumPy scalars) and init_args (plans, torch.device) get materialised too.
"""
import io
import os
import zipfile

import fuzz_common

core = fuzz_common.load_core()
scratch = fuzz_common.Scratch("input.pth")
TEMPLATE = os.environ.get("NNUNET_EXPORT_FUZZ_TEMPLATE",
                          os.path.join(fuzz_common.HERE, "work", "seeds", "pickle_template.pth"))
EXTRA_KEYS = ["init_args", "optimizer_state", "logging", "_best_ema", "grad_scaler_state"]


def _template_entries():
    with zipfile.ZipFile(TEMPLATE) as z:
        names = z.namelist()
        folder = names[0].split("/", 1)[0]
        return folder, [(n, z.read(n)) for n in names if n.split("/", 1)[1] != "data.pkl"]


FOLDER, ENTRIES = _template_entries()


def pack(pkl: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{FOLDER}/data.pkl", pkl)
        for name, payload in ENTRIES:
            z.writestr(name, payload)
    return out.getvalue()


def test_one_input(data: bytes) -> None:
    path = scratch.write("input.pth", pack(data))
    try:
        core.read_checkpoint(path, None, True, fuzz_common.factory)
    except core.ExportError as e:
        if "is not in the file" not in str(e):
            return  # the VM itself failed: a second run would fail the same way
    try:  # copying read with two threads: storages reached by the mutated pickle go to the arena
        core.read_checkpoint(path, EXTRA_KEYS, True, fuzz_common.factory, True, 2)
    except core.ExportError:
        pass


if __name__ == "__main__":
    fuzz_common.run(test_one_input)
