"""Benchmark: network construction, ours against nnU-Net's path (dna's constructor + He init).

`run(size)` returns rows {"benchmark", "case", "ours_s", "baseline_s", "ratio", "target", "ok",
"notes"} (ratio = ours / baseline, lower is better; informational, no target). Size "realistic" is
nnU-Net's default 3d_fullres PlainConvUNet for a 1-channel, 3-class dataset (~31M parameters)
and its ResEnc M ResidualEncoderUNet; "tiny" is the same plan with four narrow stages.

nnU-Net (``get_network_from_plans``) runs dna's constructor, whose convs each run PyTorch's
default init, and then He init over every conv; all of it is thrown away when the checkpoint is
loaded. ``build_network`` constructs on the meta device and only allocates.

Also reports the size of a ``torch.jit.save`` file against the unique weight bytes (the dna
state dict lists each encoder weight four times through its aliases). Results are checked after
timing: same state-dict keys, outputs within 1e-5, file data = unique weight bytes.

    python benchmarks/bench_construction.py [tiny|realistic]
"""
import io
import json
import statistics
import sys
import time
import zipfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import row  # noqa: E402  (puts the repo and tests/ on sys.path)

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # noqa: E402

from nnunet_export.architectures import build_network, load_weights, prepare_for_inference  # noqa: E402

BENCHMARK = "construction"

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
# The same plan with four narrow stages: construction costs without the 31M parameters.
TINY_ARCH = dict(ARCH, n_stages=4, features_per_stage=[4, 8, 16, 32], kernel_sizes=[[3, 3, 3]] * 4,
                 strides=[[1, 1, 1]] + [[2, 2, 2]] * 3, n_conv_per_stage=[2] * 4, n_conv_per_stage_decoder=[2] * 3)
# nnUNetResEncUNetMPlans 3d_fullres for the same dataset (timed for construction only)
RESENC_NAME = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
RESENC_ARCH = {k: v for k, v in ARCH.items() if k != "n_conv_per_stage"}
RESENC_ARCH.update(n_blocks_per_stage=[1, 3, 4, 6, 6, 6], n_conv_per_stage_decoder=[1] * 5)
TINY_RESENC_ARCH = {k: v for k, v in TINY_ARCH.items() if k != "n_conv_per_stage"}
TINY_RESENC_ARCH.update(n_blocks_per_stage=[1, 2, 2, 2], n_conv_per_stage_decoder=[1] * 3)
ARCHS = {"tiny": (TINY_ARCH, TINY_RESENC_ARCH), "realistic": (ARCH, RESENC_ARCH)}
REPEATS = {"tiny": 5, "realistic": 5}


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), out


def run(size: str = "tiny") -> list[dict]:
    if size not in ARCHS:
        raise ValueError(f"size must be one of {sorted(ARCHS)}, got {size!r}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(size, *ARCHS[size], REPEATS[size])
    finally:
        torch.set_num_threads(previous_threads)


def _run(size: str, arch: dict, resenc_arch: dict, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    ref = get_network_from_plans(NAME, arch, REQ, 1, 3, allow_init=True, deep_supervision=False)
    sd = ref.state_dict()
    n_params = sum(p.numel() for p in ref.parameters())
    build_network(NAME, arch, 1, 3)  # warm-up: first to_empty pays one-off lazy initialisation

    cases = {
        "dna constructor + He init": lambda: get_network_from_plans(NAME, arch, REQ, 1, 3, allow_init=True),
        "ours build_network (meta -> to_empty)": lambda: build_network(NAME, arch, 1, 3),
        "dna construct+init + load_state_dict": lambda: get_network_from_plans(NAME, arch, REQ, 1, 3).load_state_dict(sd),
        "ours build + load_weights (copy)": lambda: load_weights(build_network(NAME, arch, 1, 3), sd),
        "ours build(meta) + load_weights (assign)": lambda: load_weights(build_network(NAME, arch, 1, 3, device="meta"), sd),
    }
    medians = {label: timed(fn, repeats)[0] for label, fn in cases.items()}

    res_ref = get_network_from_plans(RESENC_NAME, resenc_arch, REQ, 1, 3)
    res_params = sum(p.numel() for p in res_ref.parameters())
    dna_res, _, _ = timed(lambda: get_network_from_plans(RESENC_NAME, resenc_arch, REQ, 1, 3, allow_init=True), repeats)
    ours_res, _, res_ours = timed(lambda: build_network(RESENC_NAME, resenc_arch, 1, 3), repeats)

    # saved size vs unique weight bytes
    ours = prepare_for_inference(load_weights(build_network(NAME, arch, 1, 3), sd))
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(ours), buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        stored = sum(i.file_size for i in z.infolist() if "/data/" in i.filename)
    unique = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in ours.state_dict().values()}
    all_keys = sum(t.numel() * t.element_size() for t in sd.values())

    # correctness, checked after timing
    ref.eval()
    x = torch.randn(1, 1, 64, 32, 32)  # bottleneck >= 2x1x1: InstanceNorm needs > 1 element
    with torch.no_grad():
        diff = float((ours(x) - ref(x)).abs().max())
    correct = list(ours.state_dict()) == list(sd) and diff <= 1e-5
    resenc_correct = list(res_ours.state_dict()) == list(res_ref.state_dict())
    context = (f"{size}: PlainConvUNet 3d, {n_params / 1e6:.2f}M parameters, torch {torch.__version__}, "
               f"1 thread, median of {repeats}; max |diff| vs dna {diff:.2e}")
    return [
        row(BENCHMARK, "construction: build_network vs dna constructor + He init",
            medians["ours build_network (meta -> to_empty)"], medians["dna constructor + He init"], None, correct, context),
        row(BENCHMARK, "construct + load: build + load_weights (copy) vs dna + load_state_dict",
            medians["ours build + load_weights (copy)"], medians["dna construct+init + load_state_dict"], None, correct,
            context),
        row(BENCHMARK, "construct + load: build(meta) + load_weights (assign) vs dna + load_state_dict",
            medians["ours build(meta) + load_weights (assign)"], medians["dna construct+init + load_state_dict"], None,
            correct, context),
        row(BENCHMARK, "construction, ResidualEncoderUNet: build_network vs dna constructor + He init",
            ours_res, dna_res, None, resenc_correct,
            f"{size}: ResidualEncoderUNet 3d, {res_params / 1e6:.2f}M parameters; state-dict keys equal: {resenc_correct}"),
        row(BENCHMARK, "torch.jit.save data bytes vs state-dict bytes (every alias key)", float(stored),
            float(all_keys), None, stored == sum(unique.values()),
            f"file {len(buf.getvalue())} B, tensor data {stored} B = unique weights {sum(unique.values())} B in "
            f"{len(unique)} tensors; the state dict counts {len(sd)} keys"),
    ]


if __name__ == "__main__":
    for result in run(sys.argv[1] if len(sys.argv) > 1 else "tiny"):
        print(json.dumps(result))
