"""nnU-Net's own file-level prediction on a folder of image files: the reference that
`nnunet-export predict`'s outputs are compared with, and the helpers that write such a folder.

Nothing here re-implements nnU-Net's prediction:

    nnunet_predict_folder   nnUNetPredictor.initialize_from_trained_model_folder + predict_from_files,
                            with nnUNetv2_predict's defaults (3 preprocessing and 3 export workers)
    write_case_folder       raw images -> CASE_XXXX.nii.gz files as nnU-Net's SimpleITKIO reads them
    read_segmentation       a written segmentation -> (array, spacing, origin, direction)

The predictor runs on the CPU with perform_everything_on_device=False (what nnUNetv2_predict
-device cpu ends up with: nnU-Net turns it off for every device but cuda). Its initialise reads
the checkpoints through nnunet_export's safe reader (tests/pipeline_reference.py's pattern);
predict_from_files' worker processes (spawned) only preprocess and export, they read no
checkpoint. nnU-Net prints progress notes on stdout: they go to stderr here. torch's thread count
is restored afterwards.

Example:
    >>> files = write_case_folder(tmp / "in", {"case_a": (image, spacing)})
    >>> nnunet_predict_folder(get_fixture("3d_fullres").model_dir, (0,), tmp / "in", tmp / "out")
    >>> segmentation, spacing, origin, direction = read_segmentation(tmp / "out" / "case_a.nii.gz")
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipeline_reference import _torch_threads_kept, nnunet_predictor

# nnUNetv2_predict's -npp / -nps defaults (predict_entry_point).
NNUNET_PREDICT_NPP = 3
NNUNET_PREDICT_NPS = 3

# Written when a case gives no geometry of its own: an origin off zero and a direction that
# permutes and flips axes (exactly representable in a NIfTI header, so it reads back as set).
DEFAULT_ORIGIN = (-121.5, 37.25, 8.0)
DEFAULT_DIRECTION = (0.0, -1.0, 0.0,
                     1.0, 0.0, 0.0,
                     0.0, 0.0, -1.0)

kCaseImageError = ("case {case!r}: expected an image of shape (channels, z, y, x) with a spacing of 3 values "
                   "(z, y, x), got shape {shape} and spacing {spacing}")
kCaseTupleError = ("case {case!r}: expected (image, spacing) or (image, spacing, origin, direction), "
                   "got {what}")


def nnunet_predict_folder(model_dir: Path, folds: Sequence[int | str], input_folder: Path, output_folder: Path, *,
                          save_probabilities: bool = False, tile_step_size: float = 0.5, use_mirroring: bool = True,
                          checkpoint_name: str = "checkpoint_final.pth",
                          num_processes_preprocessing: int = NNUNET_PREDICT_NPP,
                          num_processes_segmentation_export: int = NNUNET_PREDICT_NPS) -> None:
    """nnU-Net's predict_from_files over `input_folder` (nnU-Net's naming, CASE_XXXX<ending>)
    into `output_folder`, as nnUNetv2_predict -device cpu runs it: every case is predicted again
    (overwrite=True), and nnU-Net writes its CASE<ending> files (+ CASE.npz / CASE.pkl with
    save_probabilities), dataset.json, plans.json and predict_from_raw_data_args.json."""
    with contextlib.redirect_stdout(sys.stderr):
        predictor = nnunet_predictor(model_dir, folds, use_mirroring=use_mirroring, tile_step_size=tile_step_size,
                                     checkpoint_name=checkpoint_name)
        with _torch_threads_kept():
            predictor.predict_from_files(str(input_folder), str(output_folder), save_probabilities=save_probabilities,
                                         overwrite=True, num_processes_preprocessing=num_processes_preprocessing,
                                         num_processes_segmentation_export=num_processes_segmentation_export)


def _case_geometry(case: str, value) -> tuple[np.ndarray, list[float], tuple, tuple]:
    if not isinstance(value, (tuple, list)) or len(value) not in (2, 4):
        what = f"a {type(value).__name__}" + (f" of {len(value)} items" if isinstance(value, (tuple, list)) else "")
        raise ValueError(kCaseTupleError.format(case=case, what=what))
    image, spacing = np.asarray(value[0]), [float(s) for s in value[1]]
    origin, direction = (value[2], value[3]) if len(value) == 4 else (DEFAULT_ORIGIN, DEFAULT_DIRECTION)
    if image.ndim != 4 or len(spacing) != 3:
        raise ValueError(kCaseImageError.format(case=case, shape=tuple(image.shape), spacing=spacing))
    return image, spacing, tuple(float(o) for o in origin), tuple(float(d) for d in direction)


def write_case_folder(folder: Path, cases: Mapping[str, tuple], file_ending: str = ".nii.gz") -> list[list[Path]]:
    """Write each case as nnU-Net input files FOLDER/CASE_XXXX<file_ending>, one per channel.

    `cases` maps a case id to (image (c, z, y, x), spacing (z, y, x)) or (image, spacing, origin,
    direction) with origin and direction in SimpleITK's (x, y, z) order; without them the case
    gets DEFAULT_ORIGIN / DEFAULT_DIRECTION. Each channel is written as a 3-D image with
    SimpleITK (spacing reversed to x, y, z), so nnU-Net's SimpleITKIO.read_images gives back the
    image (as float32) and spacing. Returns the files per case, in the order of `cases`.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for case, value in cases.items():
        image, spacing, origin, direction = _case_geometry(case, value)
        files = []
        for channel in range(image.shape[0]):
            itk_image = sitk.GetImageFromArray(np.ascontiguousarray(image[channel]))
            itk_image.SetSpacing(spacing[::-1])
            itk_image.SetOrigin(origin)
            itk_image.SetDirection(direction)
            path = folder / f"{case}_{channel:04d}{file_ending}"
            sitk.WriteImage(itk_image, str(path), True)
            files.append(path)
        written.append(files)
    return written


def read_segmentation(path: Path) -> tuple[np.ndarray, tuple, tuple, tuple]:
    """(array (z, y, x) as stored, spacing, origin, direction) of an image file, the geometry in
    SimpleITK's (x, y, z) order as nnU-Net's SimpleITKIO.write_seg sets it."""
    import SimpleITK as sitk

    itk_image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(itk_image), itk_image.GetSpacing(), itk_image.GetOrigin(), itk_image.GetDirection()
