"""nnunet_export.image_files against nnU-Net's own reader/writer classes: the same arrays (values
and dtype), the same properties, and written segmentations that read back the same."""
from __future__ import annotations

import os

import numpy as np
import pytest

SimpleITK = pytest.importorskip("SimpleITK")
nibabel = pytest.importorskip("nibabel")
PIL_Image = pytest.importorskip("PIL.Image")
imageio = pytest.importorskip("nnunetv2.imageio.simpleitk_reader_writer")

from nnunet_export import ExportError  # noqa: E402
from nnunet_export.image_files import ImageFileError, read_images, reader_writer_name, write_seg  # noqa: E402

# A direction with every axis mixed (a rotation) and a non-trivial origin and spacing.
_ANGLE = 0.3
DIRECTION_3D = (np.cos(_ANGLE), -np.sin(_ANGLE), 0.0, np.sin(_ANGLE), np.cos(_ANGLE), 0.0, 0.0, 0.0, 1.0)
SPACING_3D = (0.8, 0.7, 2.5)
ORIGIN_3D = (-12.5, 30.25, 7.0)


def _nnunet_class(name):
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name

    return recursive_find_reader_writer_by_name(name)


def _sitk_volume(path, array, spacing=SPACING_3D, origin=ORIGIN_3D, direction=DIRECTION_3D):
    image = SimpleITK.GetImageFromArray(array, isVector=False)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    SimpleITK.WriteImage(image, str(path), True)
    return str(path)


def _assert_same_properties(mine, theirs):
    assert mine.keys() == theirs.keys()
    for key in mine:
        if isinstance(mine[key], dict):
            _assert_same_properties(mine[key], theirs[key])
        elif isinstance(mine[key], np.ndarray):
            assert np.array_equal(mine[key], theirs[key]) and mine[key].dtype == theirs[key].dtype
        else:
            assert mine[key] == theirs[key], key
            assert [type(v) for v in np.atleast_1d(mine[key])] == [type(v) for v in np.atleast_1d(theirs[key])]


def _assert_same_read(paths, name):
    mine, mine_properties = read_images(paths, name)
    theirs, their_properties = _nnunet_class(name)().read_images(paths)
    assert mine.dtype == theirs.dtype == np.float32
    assert np.array_equal(mine, theirs)
    _assert_same_properties(mine_properties, their_properties)
    return mine, mine_properties


def _read_back(path):
    image = SimpleITK.ReadImage(str(path))
    return (SimpleITK.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection(),
            image.GetPixelID())


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("volumes")
    rng = np.random.default_rng(5)
    files = {}
    for ending in (".nii.gz", ".nrrd", ".mha"):
        files[ending] = [
            _sitk_volume(folder / f"case_0000{ending}", rng.normal(0, 100, (5, 7, 6)).astype(np.float32)),
            _sitk_volume(folder / f"case_0001{ending}", rng.integers(-1000, 1000, (5, 7, 6)).astype(np.int16)),
        ]
    files["2d"] = [_sitk_volume(folder / "flat_0000.nii.gz", rng.normal(0, 1, (7, 6)).astype(np.float32),
                                spacing=(0.6, 0.9), origin=(3.0, -4.0), direction=(0.0, 1.0, 1.0, 0.0))]
    files["4d"] = [_sitk_volume(folder / "multi_0000.nii.gz", rng.normal(0, 1, (2, 5, 7, 6)).astype(np.float32),
                                spacing=(0.8, 0.7, 2.5, 1.0), origin=(0.0,) * 4, direction=tuple(np.eye(4).ravel()))]
    return folder, files


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("name", ["SimpleITKIO", "SimpleITKIOWithReorient"])
def test_simpleitk_reads_and_writes_like_nnunet(volumes, tmp_path, ending, name):
    _, files = volumes
    image, properties = _assert_same_read(files[ending], name)
    assert image.shape[0] == 2
    seg = (np.arange(image[0].size).reshape(image.shape[1:]) % 4).astype(np.uint8)
    write_seg(seg, tmp_path / f"mine{ending}", properties, name)
    _nnunet_class(name)().write_seg(seg, str(tmp_path / f"theirs{ending}"), properties)
    mine, theirs = _read_back(tmp_path / f"mine{ending}"), _read_back(tmp_path / f"theirs{ending}")
    assert np.array_equal(mine[0], theirs[0]) and mine[0].dtype == theirs[0].dtype
    assert mine[1:] == theirs[1:]
    assert sorted(os.listdir(tmp_path)) == sorted([f"mine{ending}", f"theirs{ending}"])  # no temporaries left


@pytest.mark.parametrize("kind", ["2d", "4d"])
def test_simpleitk_2d_and_4d_files(volumes, tmp_path, kind):
    _, files = volumes
    image, properties = _assert_same_read(files[kind], "SimpleITKIO")
    seg = np.zeros(image.shape[1:], dtype=np.uint16)
    seg[0, 0, :3] = 300  # 255 or more: nnU-Net writes uint16
    if kind == "4d":
        return
    write_seg(seg, tmp_path / "mine.nii.gz", properties, "SimpleITKIO")
    _nnunet_class("SimpleITKIO")().write_seg(seg, str(tmp_path / "theirs.nii.gz"), properties)
    mine, theirs = _read_back(tmp_path / "mine.nii.gz"), _read_back(tmp_path / "theirs.nii.gz")
    assert np.array_equal(mine[0], theirs[0]) and mine[0].dtype == theirs[0].dtype == np.uint16
    assert mine[1:] == theirs[1:]


@pytest.fixture(scope="module")
def nifti_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nifti")
    rng = np.random.default_rng(6)
    affine = np.array([[0.0, -0.8, 0.0, 10.0], [0.0, 0.0, 2.5, -3.0], [-0.7, 0.0, 0.0, 4.5], [0, 0, 0, 1]])
    paths = []
    for index, ending in enumerate((".nii.gz", ".nii")):
        path = folder / f"case_000{index}{ending}"
        nibabel.save(nibabel.Nifti1Image(rng.normal(0, 10, (6, 5, 4)).astype(np.float32), affine), str(path))
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("name", ["NibabelIO", "NibabelIOWithReorient"])
@pytest.mark.parametrize("index", [0, 1])
def test_nibabel_reads_and_writes_like_nnunet(nifti_files, tmp_path, name, index):
    image, properties = _assert_same_read([nifti_files[index]], name)
    seg = (np.arange(image[0].size).reshape(image.shape[1:]) % 3).astype(np.uint8)
    ending = ".nii.gz" if nifti_files[index].endswith(".gz") else ".nii"
    write_seg(seg, tmp_path / f"mine{ending}", properties, name)
    _nnunet_class(name)().write_seg(seg, str(tmp_path / f"theirs{ending}"), properties)
    mine, theirs = nibabel.load(str(tmp_path / f"mine{ending}")), nibabel.load(str(tmp_path / f"theirs{ending}"))
    assert np.array_equal(np.asanyarray(mine.dataobj), np.asanyarray(theirs.dataobj))
    assert mine.get_data_dtype() == theirs.get_data_dtype()
    assert np.array_equal(mine.affine, theirs.affine)


@pytest.fixture(scope="module")
def natural_files(tmp_path_factory):
    pytest.importorskip("skimage")
    folder = tmp_path_factory.mktemp("natural")
    rng = np.random.default_rng(7)
    files = {
        "gray": PIL_Image.fromarray(rng.integers(0, 256, (9, 11), dtype=np.uint8)),
        "rgb": PIL_Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)),
        "rgba": PIL_Image.fromarray(rng.integers(0, 256, (9, 11, 4), dtype=np.uint8)),
        "gray16": PIL_Image.fromarray(rng.integers(0, 65536, (9, 11), dtype=np.uint16)),
        "palette": PIL_Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).quantize(16),
    }
    paths = {}
    for kind, image in files.items():
        paths[kind] = str(folder / f"{kind}_0000.png")
        image.save(paths[kind])
    paths["bmp"] = str(folder / "rgb_0000.bmp")
    files["rgb"].save(paths["bmp"])
    return paths


@pytest.mark.parametrize("kind", ["gray", "rgb", "rgba", "gray16", "palette", "bmp"])
def test_natural_images_read_like_skimage(natural_files, kind):
    image, _ = _assert_same_read([natural_files[kind]], "NaturalImage2DIO")
    assert image.shape[1] == 1


@pytest.mark.parametrize("top", [2, 300])
def test_natural_images_write_like_skimage(natural_files, tmp_path, top):
    _, properties = read_images([natural_files["gray"]], "NaturalImage2DIO")
    seg = (np.arange(99).reshape(1, 9, 11) % (top + 1)).astype(np.uint16)
    write_seg(seg, tmp_path / "mine.png", properties, "NaturalImage2DIO")
    _nnunet_class("NaturalImage2DIO")().write_seg(seg, str(tmp_path / "theirs.png"), properties)
    mine, _ = _nnunet_class("NaturalImage2DIO")().read_seg(str(tmp_path / "mine.png"))
    theirs, _ = _nnunet_class("NaturalImage2DIO")().read_seg(str(tmp_path / "theirs.png"))
    assert np.array_equal(mine, theirs)
    assert np.asarray(PIL_Image.open(tmp_path / "mine.png")).dtype == np.asarray(
        PIL_Image.open(tmp_path / "theirs.png")).dtype


def test_reader_chosen_as_nnunet_does():
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    for ending in (".nii.gz", ".nrrd", ".mha", ".gipl", ".nii", ".png", ".bmp"):
        assert reader_writer_name(None, ending) == determine_reader_writer_from_file_ending(
            ending, verbose=False).__name__
    assert reader_writer_name("NibabelIO", ".nii.gz") == "NibabelIO"
    with pytest.raises(ImageFileError) as err:
        reader_writer_name("Tiff3DIO", ".tif")
    assert str(err.value) == ("image_reader_writer 'Tiff3DIO' is not one this package reproduces (it reads "
                              "SimpleITKIO, SimpleITKIOWithReorient, NibabelIO, NibabelIOWithReorient, "
                              "NaturalImage2DIO)")
    with pytest.raises(ImageFileError, match=r"^no image reader/writer of nnU-Net handles the file ending '\.jpg'"):
        reader_writer_name(None, ".jpg")


@pytest.mark.parametrize("name, ending", [("SimpleITKIO", ".nii.gz"), ("NibabelIO", ".nii.gz"),
                                          ("NaturalImage2DIO", ".png")])
def test_corrupt_and_missing_files_name_the_file(tmp_path, name, ending):
    corrupt = tmp_path / f"bad_0000{ending}"
    corrupt.write_bytes(b"\x1f\x8b this is not an image" * 10)
    with pytest.raises(ImageFileError) as err:
        read_images([corrupt], name)
    assert str(err.value).startswith(f"cannot read image file {str(corrupt)!r} with {name}: ")
    assert isinstance(err.value, ExportError)
    missing = tmp_path / f"gone_0000{ending}"
    with pytest.raises(ImageFileError) as err:
        read_images([missing], name)
    assert str(err.value) == f"cannot read image file {str(missing)!r} with {name}: no such file"


def test_files_of_one_case_must_agree(volumes, tmp_path):
    _, files = volumes
    other = _sitk_volume(tmp_path / "case_0001.nii.gz", np.zeros((5, 7, 7), dtype=np.float32))
    with pytest.raises(ImageFileError) as err:
        read_images([files[".nii.gz"][0], other])
    assert str(err.value) == ("the image files of one case differ in shape: case_0000.nii.gz: (1, 5, 7, 6), "
                              "case_0001.nii.gz: (1, 5, 7, 7)")


def test_failed_write_leaves_nothing(volumes, tmp_path):
    _, files = volumes
    _, properties = read_images(files[".nii.gz"][:1])
    broken = dict(properties, sitk_stuff=dict(properties["sitk_stuff"], direction=(1.0, 0.0)))
    with pytest.raises(Exception):
        write_seg(np.zeros((5, 7, 6), dtype=np.uint8), tmp_path / "seg.nii.gz", broken)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ImageFileError) as err:
        write_seg(np.zeros((7, 6), dtype=np.uint8), tmp_path / "seg.nii.gz", properties)
    assert str(err.value) == "the segmentation must have 3 dimensions (z, y, x; 1 slice for a 2-D image), got shape (7, 6)"
