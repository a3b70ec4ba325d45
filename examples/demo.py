"""nnunet_export demo: export the shipped nnU-Net model, then segment the shipped sample with the
EXPORTED file alone (torch.jit.load; no nnU-Net, no model code).

    python examples/demo.py [--model examples/demo_model] [--out out]

Steps: load_complete (every weight read by the safe C reader) -> to_torchscript (written
atomically, reloaded and compared with the eager model) -> torch.jit.load -> the preprocessing the
plans ask for -> argmax -> a PNG overlay and the Dice against the ground truth.

The model (examples/demo_model, written by examples/make_demo_model.py) is a real nnU-Net v2 2D
model trained by nnU-Net's own trainer on generated disks and squares.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import nnunet_export  # noqa: E402


def preprocess(image: np.ndarray, plans: dict, configuration: str):
    """What nnU-Net's DefaultPreprocessor does for this model, checked against its plans.

    Returns the normalised crop (1, 1, H, W) and the crop box. The plans say: one channel with
    ZScoreNormalization, no mask, target spacing [1, 1] = the PNG spacing (no resampling),
    identity transpose. nnU-Net first crops to the bounding box of non-zero pixels, then
    normalises with that crop's own mean and standard deviation.
    """
    cfg = plans["configurations"][configuration]
    if cfg["normalization_schemes"] != ["ZScoreNormalization"] or cfg["use_mask_for_norm"] != [False]:
        raise SystemExit(f"demo.py handles single-channel z-score models only; the plans say "
                         f"{cfg['normalization_schemes']} / mask {cfg['use_mask_for_norm']}")
    if list(plans["transpose_forward"]) != [0, 1, 2] or [float(s) for s in cfg["spacing"]] != [1.0, 1.0]:
        raise SystemExit("demo.py handles untransposed 2D models trained at spacing 1 x 1 only")
    rows, cols = np.nonzero(image)
    box = (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1)
    crop = image[box[0]:box[1], box[2]:box[3]].astype(np.float32)
    crop = (crop - crop.mean()) / max(float(crop.std()), 1e-8)  # ZScoreNormalization
    return torch.from_numpy(crop)[None, None], box


def pad_for_network(x: torch.Tensor, patch_size, divisor: int):
    """Pad (constant 0, centred, odd pixel at the high side, as nnU-Net pads) to at least the patch
    size and to a multiple of the network's total stride. Returns the padded input and the slices
    that undo it. Images larger than the patch run in one pass, not in nnU-Net's sliding window."""
    pads, undo = [], []
    for size, patch in zip(x.shape[2:], patch_size):
        target = max(int(patch), -(-size // divisor) * divisor)
        low = (target - size) // 2
        pads.append((low, target - size - low))
        undo.append(slice(low, low + size))
    padded = torch.nn.functional.pad(x, (pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
    return padded, (slice(None), slice(None), *undo)


def dice(prediction: np.ndarray, truth: np.ndarray, label: int) -> float:
    p, t = prediction == label, truth == label
    denominator = p.sum() + t.sum()
    return float(2 * (p & t).sum() / denominator) if denominator else 1.0


def write_overlay(image, truth, prediction, labels: dict, dices: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    colours = ListedColormap([(0, 0, 0, 0), (1.0, 0.25, 0.2, 0.55), (0.2, 0.55, 1.0, 0.55)])
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.9), dpi=110)
    titles = ["sample image", "ground truth", "exported model"]
    for ax, title, seg in zip(axes, titles, (None, truth, prediction)):
        ax.imshow(image, cmap="gray", interpolation="nearest")
        if seg is not None:
            ax.imshow(seg, cmap=colours, vmin=0, vmax=2, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    names = {v: k for k, v in labels.items()}
    summary = ", ".join(f"{names[label]} {d:.3f}" for label, d in dices.items())
    fig.suptitle(f"nnunet_export demo (TorchScript file, no nnU-Net at inference) - Dice: {summary}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(HERE / "demo_model"), help="nnU-Net model folder")
    parser.add_argument("--image", default=None, help="grayscale PNG (default: the model's sample)")
    parser.add_argument("--label", default=None, help="ground-truth PNG for the Dice (default: the sample's)")
    parser.add_argument("--out", default="out", help="output folder (default out/)")
    args = parser.parse_args(argv)
    from PIL import Image

    model_dir = Path(args.model)
    image_path = Path(args.image) if args.image else model_dir / "sample" / "image_0000.png"
    label_path = Path(args.label) if args.label else (None if args.image else model_dir / "sample" / "label.png")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. Load every weight through the safe reader and export with verification.
    model = nnunet_export.load_complete(model_dir, folds=0)
    print(model)
    exported_path = out / "demo_model.pt"
    report = nnunet_export.to_torchscript(model, exported_path)
    print("\nexport verification:")
    print(report.table())

    # 2. From here on only the exported file is used.
    exported = torch.jit.load(str(exported_path))
    meta = nnunet_export.read_metadata(exported_path)
    plans = json.loads((model_dir / "plans.json").read_text())
    configuration = meta["configuration"]
    image = np.asarray(Image.open(image_path).convert("L"))
    x, box = preprocess(image, plans, configuration)
    strides = plans["configurations"][configuration]["architecture"]["arch_kwargs"]["strides"]
    divisor = int(np.prod([s[0] for s in strides]))
    padded, undo = pad_for_network(x, plans["configurations"][configuration]["patch_size"], divisor)
    started = time.perf_counter()
    with torch.no_grad():
        logits = exported(padded)[undo]
    seconds = time.perf_counter() - started
    prediction = np.zeros(image.shape, dtype=np.uint8)  # outside the non-zero crop: background
    prediction[box[0]:box[1], box[2]:box[3]] = logits[0].argmax(0).numpy().astype(np.uint8)
    Image.fromarray(prediction).save(out / "demo_segmentation.png")
    print(f"\nsegmented {image_path} ({image.shape[0]} x {image.shape[1]}) with {exported_path} "
          f"in {seconds * 1000:.1f} ms (input {tuple(padded.shape)})")

    labels = {k: v for k, v in json.loads((model_dir / "dataset.json").read_text())["labels"].items()
              if k != "background"}
    dices = {}
    truth = None
    if label_path is not None:
        truth = np.asarray(Image.open(label_path))
        dices = {value: dice(prediction, truth, value) for value in labels.values()}
        for name, value in labels.items():
            print(f"Dice {name:<8} {dices[value]:.4f}")
        print(f"Dice mean     {np.mean(list(dices.values())):.4f}")
    overlay = out / "demo_overlay.png"
    write_overlay(image, truth if truth is not None else np.zeros_like(prediction), prediction,
                  labels, dices, overlay)
    print(f"wrote {overlay}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
