"""Deterministic raw test images for the preprocessing and export tests, one set per fixture.

Each image is what nnU-Net's SimpleITKIO.read_images returns for a file: float32 (c, z, y, x)
and the spacing as a list (z, y, x); a 2-D file is (c, 1, y, x) with spacing
(999 * max(in-plane), sy, sx). The images look like the fixture's training data (fixture_build.py):

    shapes group (2d, 3d_fullres, cascade, ...): CT in HU, air at -1000 around a body, no zeros
    regions:                                      two MR channels on a nonzero background
    masked, masked_2d:                            two MR channels, exactly 0 outside an ellipsoidal
                                                  body and in a closed cavity inside it

Cases (ids are stable; pytest parametrises over them):

    native      the plans' target spacing: nnU-Net does not resample
    iso         a near-isotropic spacing: resampled, not along a separate z axis unless the
                target spacing itself is anisotropic (masked: 3.0 / 0.85 > 3)
    aniso_z     (5.0, 0.8, 0.8): resampled along a separate z (axis 0) from the image's spacing
    aniso_x     (1.0, 1.0, 4.0): the low-resolution axis is x (axis 2)
    odd         odd sizes, spacing slightly off the target on every axis
    zeros       all zero, at the target spacing
    2d_file     a 2-D file (c, 1, y, x), only for fixtures with a 2d configuration
    2d_stack    several slices for the 2d configuration, spacing off-target in plane

`expected_separate_z_axis` is what nnU-Net's determine_do_sep_z_and_axis must decide when it
resamples this image to the fixture's target spacing (None: not separately); the tests check it.

Example:
    >>> case = cases_for("masked")[0]
    >>> image, spacing = case.image()
    >>> image.dtype, image.shape[0], case.id
    (dtype('float32'), 2, 'masked-native')
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from fixture_specs import GROUPS, VARIANTS

ANISOTROPY_THRESHOLD = 3.0  # nnU-Net's ANISO_THRESHOLD (the plans' resampling kwargs default)
KIND_OF_GROUP = {"shapes": "ct", "regions": "regions", "masked": "masked"}
CHANNELS = {"ct": 1, "regions": 2, "masked": 2}


@dataclass(frozen=True)
class RawCase:
    """One raw image for fixture `fixture`.

    Attributes:
        id: "<fixture>-<case>", e.g. "masked-aniso_z".
        fixture: the fixture name (nnunet_fixtures) whose model gets this image.
        kind: "ct", "regions" or "masked" (how the image looks).
        shape_zyx / spacing_zyx: the image's spatial shape and spacing, as read_images gives them.
        target_spacing_zyx: the plans' spacing of the fixture's configuration, for 2d with the
            image's own z spacing prepended (as nnU-Net's preprocessor does): what the image is
            resampled to.
        zeros: the image is all zero.
    """

    id: str
    fixture: str
    kind: str
    shape_zyx: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    target_spacing_zyx: tuple[float, float, float]
    zeros: bool = False

    @property
    def resampled(self) -> bool:
        """nnU-Net's preprocessing changes the (cropped) image's shape."""
        return any(round(s * sp / t) != s for s, sp, t in
                   zip(self.shape_zyx, self.spacing_zyx, self.target_spacing_zyx))

    @property
    def expected_separate_z_axis(self) -> int | None:
        """nnU-Net's rule: the image's own spacing decides first, then the target spacing."""
        for spacing in (self.spacing_zyx, self.target_spacing_zyx):
            if max(spacing) / min(spacing) > ANISOTROPY_THRESHOLD:
                return int(np.argmax(spacing))
        return None

    def image(self) -> tuple[np.ndarray, list[float]]:
        """(float32 (c, z, y, x), spacing [z, y, x]), the same on every call."""
        rng = np.random.default_rng(zlib.crc32(self.id.encode()))
        if self.zeros:
            data = np.zeros((CHANNELS[self.kind], *self.shape_zyx), dtype=np.float32)
        else:
            data = _GENERATORS[self.kind](self.shape_zyx, self.spacing_zyx, rng)
        return data, [float(s) for s in self.spacing_zyx]


def _ellipsoid_mask(shape, spacing, center_fraction, radii_fraction):
    """Voxels inside the ellipsoid centred at center_fraction * extent with semi-axes
    radii_fraction * (smallest in-plane extent) in mm; z is ignored for single-slice images."""
    extent = np.array(shape) * np.array(spacing)
    radius_mm = np.array(radii_fraction) * extent[1:].min()
    total = np.zeros(shape)
    for axis, (size, step) in enumerate(zip(shape, spacing)):
        if size == 1:
            continue
        coordinate_mm = (np.arange(size) + 0.5) * step - center_fraction[axis] * extent[axis]
        view = [1, 1, 1]
        view[axis] = size
        total = total + ((coordinate_mm / radius_mm[axis]) ** 2).reshape(view)
    return total <= 1.0


def _ct(shape, spacing, rng):
    """HU: air -1000 (+ noise) around a soft-tissue body (40), a ball (300) and a bright core (600)."""
    body = _ellipsoid_mask(shape, spacing, (0.5, 0.5, 0.5), (0.6, 0.42, 0.45))
    ball = _ellipsoid_mask(shape, spacing, (0.45, 0.4, 0.42), (0.2, 0.15, 0.15))
    core = _ellipsoid_mask(shape, spacing, (0.55, 0.62, 0.6), (0.12, 0.1, 0.1))
    image = np.where(body, 40.0, -1000.0) + rng.normal(0, 10, shape)
    image = np.where(ball, 300.0 + rng.normal(0, 30, shape), image)
    image = np.where(core & body, 600.0 + rng.normal(0, 30, shape), image)
    return image.astype(np.float32)[None]


def _regions(shape, spacing, rng):
    """T1 bright over a lesion, T2 over its core, both on a background of about 100."""
    whole = _ellipsoid_mask(shape, spacing, (0.5, 0.5, 0.5), (0.35, 0.3, 0.3))
    core = _ellipsoid_mask(shape, spacing, (0.5, 0.5, 0.5), (0.17, 0.15, 0.15))
    t1 = 100.0 + 200.0 * whole + rng.normal(0, 20, shape)
    t2 = 100.0 + 250.0 * core + rng.normal(0, 20, shape)
    return np.stack([t1, t2]).astype(np.float32)


def _masked(shape, spacing, rng):
    """Exactly 0 outside the body and in a closed cavity; >= 1 elsewhere in both channels."""
    body = _ellipsoid_mask(shape, spacing, (0.5, 0.5, 0.5), (0.9, 0.38, 0.36))
    cavity = _ellipsoid_mask(shape, spacing, (0.5, 0.52, 0.36), (0.12, 0.08, 0.08))
    organ = _ellipsoid_mask(shape, spacing, (0.5, 0.36, 0.58), (0.18, 0.12, 0.12))
    tissue = body & ~cavity

    def channel(base, organ_value):
        values = np.where(organ, organ_value, base) + rng.normal(0, 25, shape)
        return np.where(tissue, np.maximum(values, 1.0), 0.0)

    return np.stack([channel(300.0, 380.0), channel(150.0, 350.0)]).astype(np.float32)


_GENERATORS = {"ct": _ct, "regions": _regions, "masked": _masked}


def _target_spacing(fixture: str) -> tuple[float, float, float]:
    """The group's training spacing as read back from its NIfTI files (float32): every training
    case has it, so it is the plans' target spacing."""
    variant = VARIANTS["tiny"][fixture]
    return tuple(float(np.float32(s)) for s in GROUPS["tiny"][variant.group].dataset.spacing_zyx)


def cases_for(fixture: str) -> list[RawCase]:
    """The raw cases for tiny fixture `fixture` (see the module docstring for the ids)."""
    variant = VARIANTS["tiny"][fixture]
    kind = KIND_OF_GROUP[variant.group]
    target = _target_spacing(fixture)
    tz, ty, tx = target

    def case(name, shape, spacing, **kwargs):
        # nnU-Net's 2d preprocessing keeps the image's own z spacing (it prepends it to the plans').
        goal = (spacing[0], ty, tx) if variant.configuration == "2d" else target
        return RawCase(f"{fixture}-{name}", fixture, kind, shape, spacing, goal, **kwargs)

    cases = [
        case("native", (13, 31, 29), target),
        case("iso", (15, 27, 30), (1.3 * tz / 2, 1.1 * ty, 0.9 * tx)),
        case("aniso_z", (5, 33, 35), (5.0, 0.8, 0.8)),
        case("aniso_x", (19, 21, 7), (1.0, 1.0, 4.0)),
        case("odd", (11, 29, 31), (tz * 1.05, ty * 0.93, tx * 1.07)),
        case("zeros", (9, 17, 15), target, zeros=True),
    ]
    if variant.configuration == "2d":
        in_plane = (ty * 0.8, tx * 1.2)
        flat = (999.0 * max(in_plane), *in_plane)
        cases += [case("2d_file", (1, 37, 33), flat), case("2d_stack", (3, 26, 31), (tz, ty * 1.3, tx * 0.7))]
    return cases


# The fixtures whose kind of image differs; the other shapes fixtures share 3d_fullres's images.
REPRESENTATIVE_FIXTURES = ("3d_fullres", "2d", "regions", "masked", "masked_2d")
ALL_CASES: tuple[RawCase, ...] = tuple(c for name in REPRESENTATIVE_FIXTURES for c in cases_for(name))
