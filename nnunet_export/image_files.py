"""Image files read and segmentations written exactly as nnU-Net's reader/writer classes do it
(``nnunetv2.imageio``), with SimpleITK, nibabel and Pillow called directly.

    SimpleITKIO               .nii.gz .nrrd .mha .gipl   (SimpleITK)
    SimpleITKIOWithReorient   the same, reoriented to RAS while reading and back while writing
    NibabelIO                 .nii .nii.gz               (nibabel, axes transposed to SimpleITK's order)
    NibabelIOWithReorient     the same, reoriented to the closest canonical orientation
    NaturalImage2DIO          .png .bmp                  (Pillow; nnU-Net reads them with skimage.io,
                              which hands PNG/BMP to Pillow through imageio: the same arrays)

nnU-Net picks the class its plans name (``image_reader_writer``), else the first class whose
endings include the dataset's ``file_ending`` (:func:`reader_writer_name`). Tiff3DIO and
NaturalImage2DIO's ``.tif`` (tifffile) are not supported.

The readers are dependencies of an extra: ``pip install nnunet_export[predict]``; each is
imported when a file of its kind is first read or written.

Example:
    >>> image, properties = read_images(["case_0000.nii.gz"], "SimpleITKIO")  # doctest: +SKIP
    >>> write_seg(segmentation, "case.nii.gz", properties, "SimpleITKIO")  # doctest: +SKIP
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._core import ExportError
from .atomic_write import atomic_output

# nnU-Net's LIST_OF_IO_CLASSES order and endings (the first match of the file ending wins).
ENDINGS = {
    "NaturalImage2DIO": (".png", ".bmp", ".tif"),
    "SimpleITKIO": (".nii.gz", ".nrrd", ".mha", ".gipl"),
    "Tiff3DIO": (".tif", ".tiff"),
    "NibabelIO": (".nii", ".nii.gz"),
    "NibabelIOWithReorient": (".nii", ".nii.gz"),
}
SUPPORTED = ("SimpleITKIO", "SimpleITKIOWithReorient", "NibabelIO", "NibabelIOWithReorient", "NaturalImage2DIO")
kNaturalEndings = (".png", ".bmp")
kModules = {"SimpleITK": "SimpleITK", "nibabel": "nibabel", "PIL": "Pillow"}

kMissingPackageError = (
    "reading and writing {what} files needs the {package} package: pip install nnunet_export[predict]"
)
kUnknownReaderError = (
    "image_reader_writer {name!r} is not one this package reproduces (it reads {supported})"
)
kNoReaderError = "no image reader/writer of nnU-Net handles the file ending {ending!r} (known: {known})"
kUnreadableError = "cannot read image file {path!r} with {reader}: {reason}"
kShapeMismatchError = "the image files of one case differ in {what}: {details}"
kDimensionsError = "{path!r} has {ndim} dimensions; {reader} reads {expected}"
kNaturalShapeError = "{path!r} has shape {shape}: a natural image with 3 dimensions must be RGB or RGBA (last axis 3 or 4)"
kSegDimensionsError = "the segmentation must have 3 dimensions (z, y, x; 1 slice for a 2-D image), got shape {shape}"


class ImageFileError(ExportError):
    """An image file cannot be read (missing, corrupt, unexpected layout) or a case's files disagree."""


def _module(name: str, what: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImageFileError(kMissingPackageError.format(what=what, package=kModules[name.split(".")[0]])) from None


def reader_writer_name(image_reader_writer: str | None, file_ending: str) -> str:
    """The reader/writer nnU-Net uses: the plans' ``image_reader_writer`` if set, else the first of
    nnU-Net's classes whose endings include ``file_ending`` (``determine_reader_writer_from_file_ending``)."""
    if image_reader_writer not in (None, "", "None"):
        if image_reader_writer not in SUPPORTED:
            raise ImageFileError(kUnknownReaderError.format(name=image_reader_writer, supported=", ".join(SUPPORTED)))
        return image_reader_writer
    for name, endings in ENDINGS.items():
        if file_ending.lower() in endings:
            if name not in SUPPORTED or (name == "NaturalImage2DIO" and file_ending.lower() not in kNaturalEndings):
                raise ImageFileError(kUnknownReaderError.format(name=name, supported=", ".join(SUPPORTED)))
            return name
    known = sorted({e for endings in ENDINGS.values() for e in endings})
    raise ImageFileError(kNoReaderError.format(ending=file_ending, known=", ".join(known)))


def _reason(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    # SimpleITK's messages end with the line that says what went wrong.
    return (lines[-1] if lines else type(err).__name__)[:300]


def _read(reader: str, path: str, call):
    if not os.path.isfile(path):
        raise ImageFileError(kUnreadableError.format(path=path, reader=reader, reason="no such file"))
    try:
        return call(path)
    except ImageFileError:
        raise
    except Exception as err:  # noqa: BLE001 - every library's failure becomes one clear error
        raise ImageFileError(kUnreadableError.format(path=path, reader=reader, reason=_reason(err))) from None


def _all_same(values: list, what: str, paths: Sequence[str], compare=lambda a, b: a == b) -> None:
    if not all(compare(values[0], v) for v in values[1:]):
        details = ", ".join(f"{os.path.basename(p)}: {v}" for p, v in zip(paths, values))
        raise ImageFileError(kShapeMismatchError.format(what=what, details=details))


# --- SimpleITK ---------------------------------------------------------------------------------

def _read_sitk(paths: Sequence[str], reorient: bool) -> tuple[np.ndarray, dict]:
    sitk = _module("SimpleITK", "SimpleITK")
    reader = "SimpleITKIOWithReorient" if reorient else "SimpleITKIO"
    images, spacings, origins, directions, nnunet_spacings = [], [], [], [], []
    original_orientation = None
    for path in paths:
        itk_image = _read(reader, str(path), sitk.ReadImage)
        if reorient:
            original_orientation = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(
                itk_image.GetDirection())
            itk_image = sitk.DICOMOrient(itk_image, "RAS")
        spacing = itk_image.GetSpacing()
        spacings.append(spacing)
        origins.append(itk_image.GetOrigin())
        directions.append(itk_image.GetDirection())
        array = sitk.GetArrayFromImage(itk_image)
        if array.ndim == 2:
            array = array[None, None]
            nnunet_spacing = [max(spacing) * 999, *list(spacing)[::-1]]
        elif array.ndim == 3:
            array = array[None]
            nnunet_spacing = list(spacing)[::-1]
        elif array.ndim == 4:
            nnunet_spacing = list(spacing)[::-1][1:]
        else:
            raise ImageFileError(kDimensionsError.format(path=str(path), ndim=array.ndim, reader=reader,
                                                         expected="2, 3 or 4"))
        images.append(array)
        nnunet_spacings.append(list(np.abs(nnunet_spacing)))
    _all_same([i.shape for i in images], "shape", paths)
    _all_same(spacings, "spacing", paths)
    stuff = {"spacing": spacings[0], "origin": origins[0], "direction": directions[0]}
    if reorient:
        stuff["original_orientation"] = original_orientation
    return (np.vstack(images, dtype=np.float32, casting="unsafe"),
            {"sitk_stuff": stuff, "spacing": nnunet_spacings[0]})


def _write_sitk(seg: np.ndarray, path: Path, properties: dict, reorient: bool) -> None:
    sitk = _module("SimpleITK", "SimpleITK")
    stuff = properties["sitk_stuff"]
    if len(stuff["spacing"]) == 2:
        seg = seg[0]
    # nnU-Net's SimpleITKIOWithReorient always writes uint8.
    dtype = np.uint8 if reorient or np.max(seg) < 255 else np.uint16
    itk_image = sitk.GetImageFromArray(seg.astype(dtype, copy=False))
    itk_image.SetSpacing(stuff["spacing"])
    itk_image.SetOrigin(stuff["origin"])
    itk_image.SetDirection(stuff["direction"])
    if reorient:
        itk_image = sitk.DICOMOrient(itk_image, stuff["original_orientation"])
    sitk.WriteImage(itk_image, str(path), True)


# --- nibabel -----------------------------------------------------------------------------------

def _read_nibabel(paths: Sequence[str], reorient: bool) -> tuple[np.ndarray, dict]:
    nibabel = _module("nibabel", "NIfTI (nibabel)")
    orientations = _module("nibabel.orientations", "NIfTI (nibabel)")
    reader = "NibabelIOWithReorient" if reorient else "NibabelIO"
    images, original_affines, reoriented_affines, nnunet_spacings = [], [], [], []
    for path in paths:
        def load(p):
            image = nibabel.load(p)
            if image.ndim != 3:
                raise ImageFileError(kDimensionsError.format(path=p, ndim=image.ndim, reader=reader, expected="3"))
            original_affines.append(image.affine)
            if reorient:
                image = image.as_reoriented(orientations.io_orientation(image.affine))
                reoriented_affines.append(image.affine)
            zooms = [float(z) for z in image.header.get_zooms()[::-1]]
            return zooms, image.get_fdata().transpose((2, 1, 0))[None]
        zooms, array = _read(reader, str(path), load)
        nnunet_spacings.append(zooms)
        images.append(array)
    _all_same([i.shape for i in images], "shape", paths)
    _all_same(nnunet_spacings, "spacing", paths)
    stuff = {"original_affine": original_affines[0]}
    if reorient:
        stuff["reoriented_affine"] = reoriented_affines[0]
    return (np.vstack(images, dtype=np.float32, casting="unsafe"),
            {"nibabel_stuff": stuff, "spacing": nnunet_spacings[0]})


def _write_nibabel(seg: np.ndarray, path: Path, properties: dict, reorient: bool) -> None:
    nibabel = _module("nibabel", "NIfTI (nibabel)")
    orientations = _module("nibabel.orientations", "NIfTI (nibabel)")
    stuff = properties["nibabel_stuff"]
    seg = seg.transpose((2, 1, 0)).astype(np.uint8 if np.max(seg) < 255 else np.uint16, copy=False)
    if not reorient:
        nibabel.save(nibabel.Nifti1Image(seg, affine=stuff["original_affine"]), str(path))
        return
    image = nibabel.Nifti1Image(seg, affine=stuff["reoriented_affine"])
    back = orientations.ornt_transform(orientations.axcodes2ornt("RAS"),
                                       orientations.io_orientation(stuff["original_affine"]))
    nibabel.save(image.as_reoriented(back), str(path))


# --- natural 2-D images ------------------------------------------------------------------------

def _pillow_array(path: str) -> np.ndarray:
    image_module = _module("PIL.Image", "PNG/BMP (Pillow)")
    with image_module.open(path) as image:
        image.load()
        # imageio's Pillow plugin (what skimage.io.imread uses) expands palettes to their colours.
        if image.mode == "P":
            image = image.convert(image.palette.mode)
        return np.asarray(image)


def _read_natural(paths: Sequence[str]) -> tuple[np.ndarray, dict]:
    images = []
    for path in paths:
        array = _read("NaturalImage2DIO", str(path), _pillow_array)
        if array.ndim == 3:
            if array.shape[-1] not in (3, 4):
                raise ImageFileError(kNaturalShapeError.format(path=str(path), shape=array.shape))
            images.append(array.transpose((2, 0, 1))[:, None])
        elif array.ndim == 2:
            images.append(array[None, None])
        else:
            raise ImageFileError(kDimensionsError.format(path=str(path), ndim=array.ndim, reader="NaturalImage2DIO",
                                                         expected="2 or 3"))
    _all_same([i.shape for i in images], "shape", paths)
    return np.vstack(images, dtype=np.float32, casting="unsafe"), {"spacing": (999, 1, 1)}


def _write_natural(seg: np.ndarray, path: Path, properties: dict) -> None:
    image_module = _module("PIL.Image", "PNG/BMP (Pillow)")
    image_module.fromarray(seg[0].astype(np.uint8 if np.max(seg) < 255 else np.uint16, copy=False)).save(str(path))


# --- public ------------------------------------------------------------------------------------

def read_images(paths: Sequence[str | os.PathLike], reader_writer: str = "SimpleITKIO") -> tuple[np.ndarray, dict]:
    """``(image float32 (c, z, y, x), properties)`` exactly as nnU-Net's ``reader_writer().read_images``.

    Raises:
        ImageFileError: a file is missing, unreadable or corrupt (the message names it), the files
            disagree in shape or spacing, or the reader's package is not installed.
    """
    paths = [str(p) for p in paths]
    if not paths:
        raise ImageFileError("read_images needs at least one file")
    if reader_writer in ("SimpleITKIO", "SimpleITKIOWithReorient"):
        return _read_sitk(paths, reorient=reader_writer == "SimpleITKIOWithReorient")
    if reader_writer in ("NibabelIO", "NibabelIOWithReorient"):
        return _read_nibabel(paths, reorient=reader_writer == "NibabelIOWithReorient")
    if reader_writer == "NaturalImage2DIO":
        return _read_natural(paths)
    raise ImageFileError(kUnknownReaderError.format(name=reader_writer, supported=", ".join(SUPPORTED)))


def write_seg(seg: Any, path: str | os.PathLike, properties: dict, reader_writer: str = "SimpleITKIO") -> None:
    """Writes ``seg`` (z, y, x) as nnU-Net's ``reader_writer().write_seg`` does, atomically: into a
    temporary file of the same extension next to ``path``, renamed onto it when complete."""
    seg = np.asarray(seg.cpu() if hasattr(seg, "cpu") else seg)
    if seg.ndim != 3:
        raise ImageFileError(kSegDimensionsError.format(shape=tuple(seg.shape)))
    if reader_writer not in SUPPORTED:
        raise ImageFileError(kUnknownReaderError.format(name=reader_writer, supported=", ".join(SUPPORTED)))
    with atomic_output(Path(path)) as tmp:
        if reader_writer in ("SimpleITKIO", "SimpleITKIOWithReorient"):
            _write_sitk(seg, tmp, properties, reorient=reader_writer == "SimpleITKIOWithReorient")
        elif reader_writer in ("NibabelIO", "NibabelIOWithReorient"):
            _write_nibabel(seg, tmp, properties, reorient=reader_writer == "NibabelIOWithReorient")
        else:
            _write_natural(seg, tmp, properties)


__all__ = ["ENDINGS", "SUPPORTED", "ImageFileError", "read_images", "reader_writer_name", "write_seg"]
