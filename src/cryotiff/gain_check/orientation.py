"""The eight orientations of a gain reference (the dihedral group of the rectangle), named by
RELION's ``--gain_rot`` / ``--gain_flip`` and by MotionCor2/3's ``-RotGain`` / ``-FlipGain``.

Arrays are ``(ny, nx)`` in memory order: row 0 is MRC row 0 (the bottom row in IMOD's 3dmod,
the top row in ``relion_display``), as cryotiff's and RELION's readers hold images.

RELION (``src/motioncorr_runner.cpp``, ``MotioncorrRunner::prepareGainReference``, with
``ImageOp::rotate90`` and friends in ``src/jaz/single_particle/img_proc/image_op.h``) first
rotates, then flips:

* ``--gain_rot 1`` is ``dest[x][ny - 1 - y] = src[y][x]``, i.e. ``numpy.rot90(src, -1)``:
  90 degrees clockwise as ``relion_display`` shows it (row 0 at the top). 2 and 3 are 180 and
  270 degrees (``numpy.rot90(src, -2)``, ``numpy.rot90(src, -3)``).
* then ``--gain_flip 1`` flips Y (upside down, ``numpy.flipud``), ``2`` flips X (left to
  right, ``numpy.fliplr``).

MotionCor2/3 apply the same two steps in the same order (``-RotGain`` then ``-FlipGain``; in
MotionCor3's ``CLoadRefs::PostProcess`` and ``MrcUtil/G90Rotate2D.cu`` the array operation of
``-RotGain 1`` is RELION's ``--gain_rot 1``). MotionCor's help calls it counter-clockwise
because it pictures row 0 at the bottom, as IMOD does; RELION's help calls the same operation
clockwise "in relion_display".

Twelve flag pairs name eight orientations: a flip of X equals a flip of Y after another half
turn (``--gain_rot r --gain_flip 2`` = ``--gain_rot r+2 --gain_flip 1``). Each orientation has
one canonical pair here: the fewest non-zero flags, then the smaller ``--gain_flip``, so that
the four mirror images are a flip of X or Y alone, or a quarter turn and a flip of Y.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import OptionError

#: RELION's ``--gain_rot`` values (quarter turns clockwise in relion_display).
GAIN_ROT_VALUES = (0, 1, 2, 3)
#: RELION's ``--gain_flip`` values: none, flip Y (upside down), flip X (left to right).
GAIN_FLIP_VALUES = (0, 1, 2)

#: A small image without any symmetry: two orientations are equal exactly when they move it
#: the same way.
_PROBE = np.arange(6).reshape(2, 3)


def apply_relion_flags(image: np.ndarray, gain_rot: int, gain_flip: int) -> np.ndarray:
    """``image`` rotated by ``--gain_rot`` and then flipped by ``--gain_flip``, as RELION's
    motion correction turns the gain reference (see the module docstring). Returns a new
    C-contiguous array (``(nx, ny)`` for odd ``gain_rot``).

    Raises:
        OptionError: a value outside RELION's 0-3 / 0-2.
    """
    if gain_rot not in GAIN_ROT_VALUES:
        raise OptionError(f"--gain_rot must be 0, 1, 2 or 3; got {gain_rot}")
    if gain_flip not in GAIN_FLIP_VALUES:
        raise OptionError(f"--gain_flip must be 0, 1 or 2; got {gain_flip}")
    turned = np.rot90(image, -gain_rot)
    if gain_flip == 1:
        turned = turned[::-1, :]
    elif gain_flip == 2:
        turned = turned[:, ::-1]
    return np.ascontiguousarray(turned)


def _signature(image: np.ndarray) -> tuple[tuple[int, ...], bytes]:
    return image.shape, np.ascontiguousarray(image).tobytes()


@lru_cache(maxsize=None)
def _pairs_by_signature() -> dict[tuple[tuple[int, ...], bytes], tuple[tuple[int, int], ...]]:
    """Every RELION flag pair, grouped by the orientation it gives, canonical pair first."""
    groups: dict[tuple[tuple[int, ...], bytes], list[tuple[int, int]]] = {}
    for rot in GAIN_ROT_VALUES:
        for flip in GAIN_FLIP_VALUES:
            groups.setdefault(_signature(apply_relion_flags(_PROBE, rot, flip)), []).append((rot, flip))
    return {
        key: tuple(sorted(pairs, key=lambda p: ((p[0] != 0) + (p[1] != 0), p[1], p[0])))
        for key, pairs in groups.items()
    }


_DESCRIPTIONS = {
    (0, 0): "as is",
    (1, 0): "rotated 90 degrees clockwise",
    (2, 0): "rotated 180 degrees",
    (3, 0): "rotated 90 degrees counter-clockwise",
    (0, 1): "flipped upside down",
    (0, 2): "flipped left to right",
    (1, 1): "transposed about the other diagonal",
    (3, 1): "transposed (x and y swapped)",
}


@dataclass(frozen=True)
class Orientation:
    """One of the eight orientations, by its canonical RELION flags.

    Attributes:
        gain_rot: RELION ``--gain_rot`` (= MotionCor2/3 ``-RotGain`` for the same gain array).
        gain_flip: RELION ``--gain_flip`` (= MotionCor2/3 ``-FlipGain``).
    """

    gain_rot: int
    gain_flip: int

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The image turned into this orientation (a new C-contiguous array)."""
        return apply_relion_flags(image, self.gain_rot, self.gain_flip)

    @property
    def swaps_axes(self) -> bool:
        """True when the result is ``(nx, ny)``: the orientations with an odd quarter turn."""
        return self.gain_rot % 2 == 1

    def shape_of(self, shape_yx: tuple[int, int]) -> tuple[int, int]:
        """The ``(ny, nx)`` an image of ``shape_yx`` has in this orientation."""
        return (shape_yx[1], shape_yx[0]) if self.swaps_axes else (shape_yx[0], shape_yx[1])

    @property
    def equivalent_flags(self) -> tuple[tuple[int, int], ...]:
        """Every RELION ``(--gain_rot, --gain_flip)`` pair that gives this orientation."""
        return _pairs_by_signature()[_signature(self.apply(_PROBE))]

    @property
    def description(self) -> str:
        """In words, as ``relion_display`` shows images (row 0 at the top)."""
        return _DESCRIPTIONS[(self.gain_rot, self.gain_flip)]

    @property
    def relion_flags(self) -> str:
        return f"--gain_rot {self.gain_rot} --gain_flip {self.gain_flip}"

    @property
    def as_transpose_and_flips(self) -> tuple[bool, bool, bool]:
        """``(transpose, flip_rows, flip_columns)``: this orientation is the image transposed (if
        ``transpose``), then its rows reversed, then its columns reversed. Lets a caller that
        turns one image into several orientations transpose it only once."""
        for transpose in (False, True):
            base = _PROBE.T if transpose else _PROBE
            for flip_rows in (False, True):
                for flip_columns in (False, True):
                    turned = base[::-1] if flip_rows else base
                    turned = turned[:, ::-1] if flip_columns else turned
                    if _signature(turned) == _signature(self.apply(_PROBE)):
                        return transpose, flip_rows, flip_columns
        raise AssertionError("every orientation is a transpose and flips")  # pragma: no cover

    def after(self, first: "Orientation") -> "Orientation":
        """The orientation of applying ``first``, then this one."""
        return orientation_of_array(self.apply(first.apply(_PROBE)))

    def inverse(self) -> "Orientation":
        """The orientation that undoes this one."""
        for candidate in ORIENTATIONS:
            if candidate.after(self) == IDENTITY:
                return candidate
        raise AssertionError("the dihedral group is closed")  # pragma: no cover


def orientation_of(gain_rot: int, gain_flip: int) -> Orientation:
    """The canonical :class:`Orientation` of any RELION flag pair (for example ``(2, 1)`` gives
    ``Orientation(0, 2)``: a half turn and a flip of Y is a flip of X).

    Raises:
        OptionError: a value outside RELION's 0-3 / 0-2.
    """
    return orientation_of_array(apply_relion_flags(_PROBE, gain_rot, gain_flip))


def orientation_of_array(turned_probe: np.ndarray) -> Orientation:
    rot, flip = _pairs_by_signature()[_signature(turned_probe)][0]
    return Orientation(rot, flip)


#: The eight orientations, canonical flags: the four rotations, then the four reflections.
ORIENTATIONS: tuple[Orientation, ...] = tuple(
    Orientation(rot, flip) for rot, flip in ((0, 0), (1, 0), (2, 0), (3, 0), (0, 1), (0, 2), (1, 1), (3, 1))
)
IDENTITY = ORIENTATIONS[0]
FLIP_Y = Orientation(0, 1)


def motioncor_orientation(orientation: Orientation, gain_path: str | os.PathLike[str]) -> Orientation:
    """The ``-RotGain`` / ``-FlipGain`` that give MotionCor2/3 the gain in ``orientation`` when
    it reads ``gain_path`` itself.

    MotionCor3 reads MRC gains as stored and every TIFF gain with the TIFF Y flip
    (``TiffUtil/CLoadTiffImage.cpp``), as RELION reads ``.mrc`` and ``.tif``; a TFS ``.gain``
    (a TIFF) is also flipped there, whereas RELION and cryotiff undo the flip for ``.gain``
    (RELION ``EERRenderer::loadEERGain``). So for ``.gain`` files MotionCor needs the flip of Y
    first: the flags of ``orientation`` after ``flip Y``.
    """
    name = os.path.basename(os.fspath(gain_path))
    if name.rsplit(".", 1)[-1] == "gain" and "." in name:
        return orientation.after(FLIP_Y)
    return orientation
