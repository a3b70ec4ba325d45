"""Train the embedded demo model: a small, REAL nnU-Net v2 2D model.

Every step is nnU-Net's own: generate_dataset_json, fingerprint extraction, the default
ExperimentPlanner, the default preprocessor and nnUNetTrainer (run_training on the CPU) with its
save_checkpoint. The data are generated grayscale PNGs (read by nnU-Net's NaturalImage2DIO): a
bright disk (label 1) and a mid-grey square (label 2) on a noisy, unevenly lit background.

    python examples/make_demo_model.py                   # writes examples/demo_model/
    python examples/make_demo_model.py --epochs 2 --iterations 5 --out /tmp/m   # quick check

Writes OUT/{plans.json, dataset.json, dataset_fingerprint.json, fold_0/checkpoint_final.pth}
(the checkpoint exactly as nnU-Net saved it) and OUT/sample/{image_0000.png, label.png}, a case
that was never seen in training. Only the planner's feature counts are lowered (as a custom
planner subclass would) so the shipped folder stays small.

The shipped model: 60 cases of 64 x 64, 15 epochs x 20 iterations (the 240 s budget, one torch
thread), planning+preprocessing 174 s and training 279 s on a shared, heavily loaded 2-core CPU;
4.55 MiB written; nnU-Net's pseudo Dice at the last epoch 0.994 / 0.991.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

# nnU-Net reads these at import time: set them before anything imports nnunetv2.
os.environ["nnUNet_def_n_proc"] = "1"
os.environ["nnUNet_compile"] = "false"
os.environ.setdefault("MPLBACKEND", "agg")

import numpy as np  # noqa: E402

DATASET_ID = 990
DATASET_NAME = f"Dataset{DATASET_ID:03d}_DemoShapes"
IMAGE_SIZE = 64
LABELS = {"background": 0, "disk": 1, "square": 2}
SAMPLE_SEED = 20261127  # the held-out sample; training cases use seeds 0..n-1


def make_case(seed: int, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One uint8 image and its uint8 label map: a disk and a square that do not overlap."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    seg = np.zeros((size, size), dtype=np.uint8)
    while True:
        radius = rng.uniform(0.09, 0.16) * size
        cy, cx = rng.uniform(radius + 2, size - radius - 2, size=2)
        side = int(rng.uniform(0.18, 0.30) * size)
        sy, sx = rng.integers(2, size - side - 2, size=2)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        square = np.zeros_like(disk)
        square[sy:sy + side, sx:sx + side] = True
        # keep a gap of 3 pixels between the shapes so the ground truth is unambiguous
        grown = np.zeros_like(disk)
        grown[max(0, sy - 3):sy + side + 3, max(0, sx - 3):sx + side + 3] = True
        if not (disk & grown).any():
            break
    seg[disk] = 1
    seg[square] = 2
    # Uneven lighting (a linear ramp) plus noise, so a fixed threshold alone is not the answer.
    angle = rng.uniform(0, 2 * np.pi)
    ramp = 25.0 * ((np.cos(angle) * xx + np.sin(angle) * yy) / size)
    intensity = np.array([60.0, 200.0, 130.0], dtype=np.float32)[seg]
    image = intensity + ramp + rng.normal(0, 18, seg.shape)
    return np.clip(image, 1, 255).astype(np.uint8), seg


def _write_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def write_raw_dataset(raw_root: Path, num_cases: int) -> None:
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    folder = raw_root / DATASET_NAME
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir(parents=True)
    for index in range(num_cases):
        image, seg = make_case(index)
        _write_png(image, folder / "imagesTr" / f"shapes_{index:03d}_0000.png")
        _write_png(seg, folder / "labelsTr" / f"shapes_{index:03d}.png")
    generate_dataset_json(
        str(folder), channel_names={0: "gray"}, labels=LABELS, num_training_cases=num_cases,
        file_ending=".png", dataset_name=DATASET_NAME,
        description="nnunet_export demo: generated disks and squares on a noisy background",
        license="CC0", converted_by="examples/make_demo_model.py",
        overwrite_image_reader_writer="NaturalImage2DIO",
    )


def plan_and_preprocess() -> None:
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        preprocess_dataset,
    )

    extract_fingerprint_dataset(DATASET_ID, num_processes=1, check_dataset_integrity=True, clean=True,
                                verbose=False, show_progress_bar=False)
    # The planner sets torch's threads to nnUNet_n_proc_DA: it must be >= 1 while planning.
    os.environ["nnUNet_n_proc_DA"] = "1"
    planner = ExperimentPlanner(DATASET_ID)
    # What a custom planner subclass would change: fewer features, so the model stays small.
    planner.UNet_base_num_features = 16
    planner.UNet_max_features_2d = 64
    planner.plan_experiment()
    preprocess_dataset(DATASET_ID, "nnUNetPlans", ("2d",), num_processes=(1,), verbose=False,
                       show_progress_bar=False)


def train(epochs: int, iterations: int, budget_s: float) -> tuple[Path, int]:
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    preprocessed = Path(os.environ["nnUNet_preprocessed"]) / DATASET_NAME
    plans = load_json(str(preprocessed / "nnUNetPlans.json"))
    plans["continue_training"] = False  # what run_training.py's get_trainer_from_args passes
    dataset_json = load_json(str(preprocessed / "dataset.json"))
    os.environ["nnUNet_n_proc_DA"] = "0"  # single-threaded augmentation: no worker processes
    trainer = nnUNetTrainer(plans=plans, configuration="2d", fold=0, dataset_json=dataset_json,
                            device=torch.device("cpu"))
    # The attributes nnU-Net's own short-schedule variants (nnUNetTrainer_5epochs, ...) change.
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = 1
    # nnUNetTrainer.run_training's loop, verbatim, plus a wall-clock budget: on a shared CPU the
    # epoch count that fits a few minutes is not known in advance. on_train_end writes
    # checkpoint_final.pth with nnU-Net's save_checkpoint either way.
    started = time.perf_counter()
    trainer.on_train_start()
    for _ in range(trainer.current_epoch, trainer.num_epochs):
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        train_outputs = [trainer.train_step(next(trainer.dataloader_train)) for _ in range(iterations)]
        trainer.on_train_epoch_end(train_outputs)
        with torch.no_grad():
            trainer.on_validation_epoch_start()
            val_outputs = [trainer.validation_step(next(trainer.dataloader_val))
                           for _ in range(trainer.num_val_iterations_per_epoch)]
            trainer.on_validation_epoch_end(val_outputs)
        trainer.on_epoch_end()
        if time.perf_counter() - started > budget_s:
            break
    done = trainer.current_epoch
    trainer.on_train_end()
    return Path(trainer.output_folder_base), done


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "demo_model"))
    parser.add_argument("--cases", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=50, help="epochs of the LR schedule (upper bound)")
    parser.add_argument("--iterations", type=int, default=20, help="iterations per epoch")
    parser.add_argument("--budget", type=float, default=240.0, help="stop after the epoch that passes this many seconds")
    # One thread: on a busy shared CPU, OpenMP threads that wait for each other are slower than one.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    random.seed(0)
    np.random.seed(0)
    started = time.perf_counter()
    out = Path(args.out).resolve()
    with tempfile.TemporaryDirectory(prefix="nnunet-demo-") as tmp:
        tmp = Path(tmp)
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            (tmp / name).mkdir()
            os.environ[name] = str(tmp / name)
        import torch

        torch.manual_seed(0)
        torch.set_num_threads(args.threads)
        write_raw_dataset(tmp / "nnUNet_raw", args.cases)
        plan_and_preprocess()
        prepared = time.perf_counter()
        model_folder, epochs_done = train(args.epochs, args.iterations, args.budget)
        trained = time.perf_counter()

        if out.exists():
            shutil.rmtree(out)
        (out / "fold_0").mkdir(parents=True)
        for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
            shutil.copy2(model_folder / name, out / name)
        shutil.copy2(model_folder / "fold_0" / "checkpoint_final.pth", out / "fold_0" / "checkpoint_final.pth")
        shutil.copy2(model_folder / "fold_0" / "progress.png", out / "fold_0" / "progress.png")
    (out / "sample").mkdir()
    image, seg = make_case(SAMPLE_SEED)
    _write_png(image, out / "sample" / "image_0000.png")
    _write_png(seg, out / "sample" / "label.png")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"[make_demo_model] planning+preprocessing {prepared - started:.1f} s, "
          f"training {trained - prepared:.1f} s ({epochs_done} epochs x {args.iterations} iterations)")
    print(f"[make_demo_model] wrote {out} ({size / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
