"""nnunet_export demo: export the shipped nnU-Net model's whole prediction, then segment the
shipped sample with the EXPORTED file alone (torch.jit.load; no nnU-Net, no model code, no scipy).

    python examples/demo.py [--model examples/demo_model] [--out out]

Steps: load_complete (every weight read by the safe C reader) -> model.pipeline() (nnU-Net's
preprocessing, sliding window with Gaussian and mirroring, export back to the image's geometry)
-> to_torchscript (written atomically, reloaded and compared with the eager module) ->
nnunet_export.predict with the exported file (the image read as nnU-Net's NaturalImage2DIO reads
it, the segmentation written as nnU-Net writes it) -> a PNG overlay and the Dice against the
ground truth.

The model (examples/demo_model, written by examples/make_demo_model.py) is a real nnU-Net v2 2D
model trained by nnU-Net's own trainer on generated disks and squares.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import nnunet_export  # noqa: E402


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
    titles = ["sample image", "ground truth", "nnunet-export predict"]
    for ax, title, seg in zip(axes, titles, (None, truth, prediction)):
        ax.imshow(image, cmap="gray", interpolation="nearest")
        if seg is not None:
            ax.imshow(seg, cmap=colours, vmin=0, vmax=2, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    names = {v: k for k, v in labels.items()}
    summary = ", ".join(f"{names[label]} {d:.3f}" for label, d in dices.items())
    fig.suptitle(f"nnunet_export demo (the exported pipeline file, no nnU-Net at inference) - Dice: {summary}")
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

    # 1. Load every weight through the safe reader; export the whole prediction with verification.
    model = nnunet_export.load_complete(model_dir, folds=0)
    print(model)
    exported_path = out / "demo_model.pt"
    report = nnunet_export.to_torchscript(model.pipeline(), exported_path)
    print("\nexport verification:")
    print(report.table())

    # 2. From here on only the exported file is used: nnunet_export.predict (what `nnunet-export
    # predict` runs) reads the PNG as nnU-Net's NaturalImage2DIO does, runs the file's forward
    # and writes the segmentation nnU-Net would write, atomically.
    predictions = out / "predictions"
    summary = nnunet_export.predict(exported_path, [[image_path]], predictions, case_ids=["sample"], progress=False)
    print()
    print(summary.table())
    if summary.failed:
        raise SystemExit(f"predict failed: {summary.failed[0].error}")
    print(f"the same from the command line: nnunet-export predict -i FOLDER -o {predictions} -m {exported_path}")
    png = np.asarray(Image.open(image_path).convert("L"))
    prediction = np.asarray(Image.open(predictions / "sample.png"))
    Image.fromarray(prediction).save(out / "demo_segmentation.png")

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
    write_overlay(png, truth if truth is not None else np.zeros_like(prediction), prediction,
                  labels, dices, overlay)
    print(f"wrote {overlay}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
