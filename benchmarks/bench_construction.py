"""Construction time of a ~31M-parameter nnU-Net 3d_fullres network: ours vs nnU-Net's path.

nnU-Net (``get_network_from_plans``) runs dna's constructor, whose convs each run PyTorch's
default init, and then He init over every conv; all of it is thrown away when the checkpoint is
loaded. ``build_network`` constructs on the meta device and only allocates.

Also reports the size of a ``torch.jit.save`` file against the unique weight bytes (the dna
state dict lists each encoder weight four times through its aliases).

Run: PYTHONPATH=. python benchmarks/bench_construction.py   (results are checked after timing)
"""
import io
import statistics
import time
import zipfile

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_export.architectures import build_network, load_weights, prepare_for_inference

NAME = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
# nnU-Net's default 3d_fullres plan for a 1-channel, 3-class dataset (patch 128x128x128)
ARCH = {
    "n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
    "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 6,
    "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5, "n_conv_per_stage": [2] * 6,
    "n_conv_per_stage_decoder": [2] * 5, "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
    "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
}
REQ = ["conv_op", "norm_op", "dropout_op", "nonlin"]
# nnUNetResEncUNetMPlans 3d_fullres for the same dataset (timed for construction only)
RESENC_NAME = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
RESENC_ARCH = {k: v for k, v in ARCH.items() if k != "n_conv_per_stage"}
RESENC_ARCH.update(n_blocks_per_stage=[1, 3, 4, 6, 6, 6], n_conv_per_stage_decoder=[1] * 5)
REPEATS = 5


def timed(fn):
    times, out = [], None
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), out


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ref = get_network_from_plans(NAME, ARCH, REQ, 1, 3, allow_init=True, deep_supervision=False)
    sd = ref.state_dict()
    n_params = sum(p.numel() for p in ref.parameters())
    build_network(NAME, ARCH, 1, 3)  # warm-up: first to_empty pays one-off lazy initialisation

    rows = [
        ("dna constructor + He init", lambda: get_network_from_plans(NAME, ARCH, REQ, 1, 3, allow_init=True)),
        ("ours build_network (meta -> to_empty)", lambda: build_network(NAME, ARCH, 1, 3)),
        ("dna construct+init + load_state_dict", lambda: get_network_from_plans(NAME, ARCH, REQ, 1, 3).load_state_dict(sd)),
        ("ours build + load_weights (copy)", lambda: load_weights(build_network(NAME, ARCH, 1, 3), sd)),
        ("ours build(meta) + load_weights (assign)", lambda: load_weights(build_network(NAME, ARCH, 1, 3, device="meta"), sd)),
    ]
    print(f"network: PlainConvUNet 3d, {n_params / 1e6:.1f}M parameters, torch {torch.__version__}, 1 thread")
    results = {}
    for label, fn in rows:
        med, best, _ = timed(fn)
        results[label] = med
        print(f"  {label:42s} median {med * 1e3:8.1f} ms   min {best * 1e3:8.1f} ms")
    base = results["dna constructor + He init"]
    print(f"  construction speed-up (dna / ours): {base / results['ours build_network (meta -> to_empty)']:.1f}x")
    base = results["dna construct+init + load_state_dict"]
    print(f"  construct+load speed-up, copy:   {base / results['ours build + load_weights (copy)']:.1f}x")
    print(f"  construct+load speed-up, assign: {base / results['ours build(meta) + load_weights (assign)']:.1f}x")

    res_ref = get_network_from_plans(RESENC_NAME, RESENC_ARCH, REQ, 1, 3)
    res_params = sum(p.numel() for p in res_ref.parameters())
    dna_res, _, _ = timed(lambda: get_network_from_plans(RESENC_NAME, RESENC_ARCH, REQ, 1, 3, allow_init=True))
    ours_res, _, res_ours = timed(lambda: build_network(RESENC_NAME, RESENC_ARCH, 1, 3))
    print(f"ResidualEncoderUNet 3d (ResEnc M), {res_params / 1e6:.1f}M parameters:")
    print(f"  dna constructor + He init median {dna_res * 1e3:.1f} ms, ours median {ours_res * 1e3:.1f} ms "
          f"({dna_res / ours_res:.1f}x)")
    assert list(res_ours.state_dict()) == list(res_ref.state_dict())

    # saved size vs unique weight bytes
    ours = prepare_for_inference(load_weights(build_network(NAME, ARCH, 1, 3), sd))
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(ours), buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        stored = sum(i.file_size for i in z.infolist() if "/data/" in i.filename)
    unique = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in ours.state_dict().values()}
    all_keys = sum(t.numel() * t.element_size() for t in sd.values())
    print(f"  state-dict bytes counting every alias key: {all_keys / 2**20:.2f} MiB ({len(sd)} keys)")
    print(f"  unique weight bytes:                       {sum(unique.values()) / 2**20:.2f} MiB ({len(unique)} tensors)")
    print(f"  torch.jit.save file: {len(buf.getvalue()) / 2**20:.2f} MiB, of which tensor data {stored / 2**20:.2f} MiB")

    # correctness, checked after timing
    assert list(ours.state_dict()) == list(sd)
    assert stored == sum(unique.values())
    ref.eval()
    x = torch.randn(1, 1, 64, 32, 32)  # bottleneck 2x1x1: InstanceNorm needs > 1 element
    with torch.no_grad():
        diff = float((ours(x) - ref(x)).abs().max())
    assert diff <= 1e-5, diff
    print(f"  check: keys equal, outputs equal (max abs diff {diff:.2e})")


if __name__ == "__main__":
    main()
