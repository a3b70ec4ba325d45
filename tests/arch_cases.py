"""Architecture configurations shared by the architecture tests, and reference builders.

The reference network is built by nnU-Net's own code path (``get_network_from_plans``, which
runs dna's constructor and He init), then given non-trivial norm affine parameters, biases and
BatchNorm running statistics, so that a wrong wiring cannot hide behind zeros and ones.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
_IMPORTABLE = ("conv_op", "norm_op", "dropout_op", "nonlin", "block")

IN = {d: f"torch.nn.modules.instancenorm.InstanceNorm{d}d" for d in (1, 2, 3)}
BN = {d: f"torch.nn.modules.batchnorm.BatchNorm{d}d" for d in (1, 2, 3)}
CONV = {d: f"torch.nn.modules.conv.Conv{d}d" for d in (1, 2, 3)}


@dataclass
class Case:
    id: str
    network_class_name: str
    arch_kwargs: Dict[str, Any]
    input_channels: int
    output_channels: int
    deep_supervision: bool
    # two stride-divisible spatial sizes: the "patch size" and another one
    sizes: Tuple[Tuple[int, ...], Tuple[int, ...]]
    batch: int = 2


def _kw(dim: int, n_stages: int, **over: Any) -> Dict[str, Any]:
    kw: Dict[str, Any] = {
        "n_stages": n_stages,
        "features_per_stage": [4 * 2 ** i for i in range(n_stages)],
        "conv_op": CONV[dim],
        "kernel_sizes": [[3] * dim] * n_stages,
        "strides": [[1] * dim] + [[2] * dim] * (n_stages - 1),
        "n_conv_per_stage": 2,
        "n_conv_per_stage_decoder": 2,
        "conv_bias": True,
        "norm_op": IN[dim],
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    kw.update(over)
    return kw


def _resenc(kw: Dict[str, Any], blocks: Any = 2) -> Dict[str, Any]:
    kw = dict(kw)
    kw.pop("n_conv_per_stage")
    kw["n_blocks_per_stage"] = blocks
    return kw


CASES: List[Case] = [
    # nnU-Net default 2d: InstanceNorm, LeakyReLU, isotropic strides
    Case("plain2d_in", PLAIN, _kw(2, 4), 1, 3, False, ((32, 32), (48, 16))),
    # 3d_fullres-like anisotropic plan (1x3x3 kernels and 1x2x2 strides on the thick axis)
    Case("plain3d_in_aniso", PLAIN,
         _kw(3, 4, kernel_sizes=[[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]],
             strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]], n_conv_per_stage_decoder=[1, 2, 1]),
         2, 3, False, ((4, 16, 16), (6, 8, 24))),
    # nnUNetTrainerBN-style BatchNorm with dropout, nonlin_first, deep supervision
    Case("plain3d_bn_dropout_nlfirst_ds", PLAIN,
         _kw(3, 3, norm_op=BN[3], dropout_op="torch.nn.Dropout3d", dropout_op_kwargs={"p": 0.3},
             nonlin_first=True, strides=[[1, 1, 1], [2, 2, 1], [2, 2, 2]]),
         1, 2, True, ((8, 8, 4), (12, 4, 6))),
    # BatchNorm 2d, nonlin_first without dropout, ReLU, no conv bias, int features, per-stage convs
    Case("plain2d_bn_relu_nlfirst", PLAIN,
         _kw(2, 3, norm_op=BN[2], nonlin="torch.nn.modules.activation.ReLU", nonlin_first=True,
             conv_bias=False, features_per_stage=6, n_conv_per_stage=[1, 2, 3], n_conv_per_stage_decoder=[3, 1]),
         3, 2, False, ((16, 16), (8, 24))),
    # 1d; strides and kernel sizes given as plain ints (first stage strided too), deep supervision
    Case("plain1d_int_strides_ds", PLAIN, _kw(1, 3, kernel_sizes=5, strides=2), 2, 4, True, ((16,), (24,))),
    # no norm, GELU, plain Dropout, 5x5 kernels
    Case("plain2d_nonorm_gelu_dropout", PLAIN,
         _kw(2, 3, norm_op=None, norm_op_kwargs=None, nonlin="torch.nn.GELU", nonlin_kwargs={"approximate": "tanh"},
             dropout_op="torch.nn.modules.dropout.Dropout", dropout_op_kwargs={"p": 0.1}, kernel_sizes=[[5, 5]] * 3),
         1, 2, False, ((16, 16), (8, 12))),
    # learnable nonlinearity (PReLU has its own weight and aliases), InstanceNorm with running stats
    Case("plain3d_prelu_in_stats", PLAIN,
         _kw(3, 2, nonlin="torch.nn.PReLU", nonlin_kwargs={"init": 0.1},
             norm_op_kwargs={"eps": 1e-5, "affine": True, "track_running_stats": True}),
         1, 2, False, ((4, 4, 4), (6, 2, 8))),
    Case("plain2d_elu_2stages_ds", PLAIN,
         _kw(2, 2, nonlin="torch.nn.ELU", nonlin_kwargs={"alpha": 0.5}), 1, 2, True, ((8, 8), (4, 6))),
    # ResEnc M-like 3d: anisotropic, 1 block in the first stage, 1 conv per decoder stage
    Case("resenc3d_in_aniso", RESENC,
         _resenc(_kw(3, 4, kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                     strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]], n_conv_per_stage_decoder=1),
                 blocks=[1, 2, 2, 2]),
         1, 3, False, ((8, 16, 16), (8, 8, 24))),
    Case("resenc2d_bn_dropout_ds", RESENC,
         _resenc(_kw(2, 3, norm_op=BN[2], dropout_op="torch.nn.Dropout2d", dropout_op_kwargs={"p": 0.2})),
         2, 2, True, ((16, 16), (8, 24))),
    # Bottleneck blocks, explicit stem width, block given as dna's dotted name
    Case("resenc3d_bottleneck_stem", RESENC,
         _resenc(_kw(3, 3, block="dynamic_network_architectures.building_blocks.residual.BottleneckD",
                     bottleneck_channels=[2, 4, 4], stem_channels=6, features_per_stage=[8, 8, 16])),
         1, 2, False, ((4, 8, 8), (8, 4, 4))),
    # 1d, no nonlinearity at all (the block's post-add nonlin becomes the identity)
    Case("resenc1d_no_nonlin", RESENC,
         _resenc(_kw(1, 3, nonlin=None, nonlin_kwargs=None), blocks=1), 1, 2, False, ((16,), (8,))),
    # equal widths in consecutive stages and stride 1 in a later stage: identity skips
    Case("resenc2d_identity_skips", RESENC,
         _resenc(_kw(2, 3, features_per_stage=[8, 8, 8], strides=[[1, 1], [1, 1], [2, 2]],
                     nonlin="torch.nn.SiLU", conv_bias=False), blocks=2),
         1, 2, False, ((8, 8), (4, 6))),
]
CASE_IDS = [c.id for c in CASES]


def build_reference(case: Case, seed: int = 0) -> torch.nn.Module:
    """Build the case with nnU-Net's own code (seeded He init), then randomise norms/biases/stats."""
    torch.manual_seed(seed)
    req = [k for k in _IMPORTABLE if k in case.arch_kwargs]
    net = get_network_from_plans(case.network_class_name, dict(case.arch_kwargs), req,
                                 case.input_channels, case.output_channels,
                                 allow_init=True, deep_supervision=case.deep_supervision)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.instancenorm._InstanceNorm)):
                if m.weight is not None:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
                if m.running_mean is not None:
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.num_batches_tracked.fill_(int(torch.randint(1, 1000, ())))
            elif isinstance(m, torch.nn.modules.conv._ConvNd) and m.bias is not None:
                m.bias.uniform_(-0.1, 0.1)
            elif isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(0.0, 0.3)
    return net.eval()


def make_input(case: Case, size_index: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((case.batch, case.input_channels, *case.sizes[size_index]), generator=g)


def as_list(out: Any) -> List[torch.Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def alias_groups(module: torch.nn.Module) -> List[Tuple[str, ...]]:
    """State-dict keys grouped by the tensor object they name (groups of size > 1 only)."""
    groups: Dict[int, List[str]] = {}
    for key, t in module.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), []).append(key)
    return sorted(tuple(g) for g in groups.values() if len(g) > 1)


def unique_storage_bytes(module: torch.nn.Module) -> int:
    seen: Dict[int, int] = {}
    for t in module.state_dict().values():
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def max_abs_diff(a: Any, b: Any) -> float:
    la, lb = as_list(a), as_list(b)
    assert len(la) == len(lb)
    return max(float((x - y).abs().max()) for x, y in zip(la, lb))


def case_by_id(case_id: str) -> Case:
    return next(c for c in CASES if c.id == case_id)


def random_cases(n: int, seed: int) -> List[Case]:
    """Seeded random configurations (dims, stages, anisotropic kernels/strides, ops, blocks).

    ResEnc cases always get an affine norm: dna's ResidualEncoderUNet.initialize zeroes the last
    norm's weight in each block and fails without one, so nnU-Net cannot build them either.
    """
    import random

    rng = random.Random(seed)
    cases = []
    for i in range(n):
        dim, n_stages, resenc = rng.choice([1, 2, 3]), rng.randint(2, 4), rng.random() < 0.5
        strides = [[1] * dim] + [[rng.choice([1, 2]) for _ in range(dim)] for _ in range(n_stages - 1)]
        kw: Dict[str, Any] = {
            "n_stages": n_stages,
            "features_per_stage": [rng.choice([2, 4, 6]) * (s + 1) for s in range(n_stages)],
            "conv_op": CONV[dim],
            "kernel_sizes": [[rng.choice([1, 3]) if rng.random() < 0.3 else 3 for _ in range(dim)]
                             for _ in range(n_stages)],
            "strides": strides,
            "n_conv_per_stage_decoder": [rng.randint(1, 2) for _ in range(n_stages - 1)],
            "conv_bias": rng.random() < 0.5,
            "norm_op": rng.choice([IN[dim], BN[dim]] + ([] if resenc else [None])),
            "norm_op_kwargs": {"eps": 1e-5, "affine": resenc or rng.random() < 0.8},
            "dropout_op": rng.choice([None, "torch.nn.Dropout"]),
            "dropout_op_kwargs": {"p": 0.1},
            "nonlin": rng.choice(["torch.nn.LeakyReLU", "torch.nn.ReLU", "torch.nn.PReLU", None]),
            "nonlin_kwargs": None,
        }
        if resenc:
            kw["n_blocks_per_stage"] = [rng.randint(1, 2) for _ in range(n_stages)]
            if rng.random() < 0.3:
                kw["block"] = "dynamic_network_architectures.building_blocks.residual.BottleneckD"
                kw["bottleneck_channels"] = 3
        else:
            kw["n_conv_per_stage"] = [rng.randint(1, 2) for _ in range(n_stages)]
            kw["nonlin_first"] = rng.random() < 0.5
        size = [2] * dim
        for st in strides:
            size = [a * b for a, b in zip(size, st)]
        cases.append(Case(f"random{i}", RESENC if resenc else PLAIN, kw, rng.randint(1, 2), rng.randint(1, 3),
                          rng.random() < 0.5, (tuple(size), tuple(size)), batch=1))
    return cases
