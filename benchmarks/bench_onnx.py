"""Benchmark: the network's forward on CPU at patch size, three engines side by side.

`run(size)` returns rows (see timing.py). The model is fold 0 of the 3d_fullres fixture of
tests/nnunet_fixtures.py at `size` ("tiny" or "realistic"; NNUNET_EXPORT_BENCH_MODEL_DIR names a
trained model folder instead). Engines, on the same input in the same run, interleaved after
warm-up, one intra-op thread each (so other load on a shared machine hits all alike):

- torch eager: the module load_complete returns (the baseline of every ratio);
- TorchScript: the file to_torchscript writes, loaded with torch.jit.load;
- ONNX Runtime: the file to_onnx writes, one CPU InferenceSession (all graph optimizations).

Rows: latency ratio of each engine against eager (no target: reported), with max |diff| to eager
and the GFLOP/s reached (FLOPs of one forward from torch.utils.flop_counter). Results are checked
after timing: TorchScript within 1e-6, ONNX Runtime within 1e-4 of eager.

    PYTHONPATH=. python benchmarks/bench_onnx.py tiny
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import row  # noqa: E402  (puts the repo and tests/ on sys.path)

import nnunet_export  # noqa: E402
from nnunet_export.export_writer import quiet_torchscript  # noqa: E402
from nnunet_export.model import verification_inputs  # noqa: E402

BENCHMARK = "onnx"
TOLERANCES = {"torchscript": 1e-6, "onnxruntime": 1e-4}
# (forward repeats, warm-up runs) per size
REPEATS = {"tiny": (20, 3), "realistic": (3, 1)}
THREADS = 1


def _model_dir(size: str) -> Path:
    given = os.environ.get("NNUNET_EXPORT_BENCH_MODEL_DIR")
    if given:
        return Path(given)
    from nnunet_fixtures import get_fixture

    return get_fixture("3d_fullres", size=size).model_dir


def _flops(module: torch.nn.Module, example: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(example)
    return counter.get_total_flops()


def run(size: str = "tiny") -> list[dict]:
    if size not in REPEATS:
        raise ValueError(f"size must be one of {sorted(REPEATS)}, got {size!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return _run(size, *REPEATS[size])
    finally:
        torch.set_num_threads(previous)


def _run(size: str, repeats: int, warmup: int) -> list[dict]:
    import onnxruntime

    model_dir = _model_dir(size)
    model = nnunet_export.load_complete(model_dir, folds=0)
    example = verification_inputs(model.info.config, torch.device("cpu"), full=True)[0]  # patch size
    with tempfile.TemporaryDirectory() as tmp:
        ts_path, onnx_path = Path(tmp, "model.pt"), Path(tmp, "model.onnx")
        nnunet_export.to_torchscript(model, ts_path, verify=False)
        nnunet_export.to_onnx(model, onnx_path, verify=False)
        with quiet_torchscript():
            scripted = torch.jit.load(str(ts_path))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        array = example.numpy()

        def eager():
            with torch.no_grad():
                return model(example)

        def torchscript():
            with torch.no_grad():
                return scripted(example)

        def ort():
            return torch.from_numpy(session.run(["logits"], {"data": array})[0])

        engines = {"eager": eager, "torchscript": torchscript, "onnxruntime": ort}
        for _ in range(warmup):
            for call in engines.values():
                call()
        times: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(repeats):
            for name, call in engines.items():
                started = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - started)
        median = {name: statistics.median(values) for name, values in times.items()}
        # correctness after timing
        expected = eager()
        diffs = {name: float((engines[name]().double() - expected.double()).abs().max())
                 for name in ("torchscript", "onnxruntime")}
    flops = _flops(model, example)
    params = sum(p.numel() for p in model.parameters())
    context = (f"{size}: patch {tuple(example.shape)}, {params / 1e6:.2f}M parameters, {flops / 1e9:.3g} GFLOP, "
               f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {THREADS} thread(s), "
               f"median of {repeats} interleaved after {warmup} warm-up; eager {median['eager'] * 1e3:.2f} ms = "
               f"{flops / median['eager'] / 1e9:.2f} GFLOP/s")
    return [
        row(BENCHMARK, f"forward at patch size: {name} vs torch eager", median[name], median["eager"], None,
            diffs[name] <= TOLERANCES[name],
            f"max |diff| vs eager {diffs[name]:.3g} (<= {TOLERANCES[name]:g}); "
            f"{flops / median[name] / 1e9:.2f} GFLOP/s; {context}")
        for name in ("torchscript", "onnxruntime")
    ]


if __name__ == "__main__":
    for result in run(sys.argv[1] if len(sys.argv) > 1 else "tiny"):
        print(json.dumps(result))
