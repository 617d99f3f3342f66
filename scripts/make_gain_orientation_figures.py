#!/usr/bin/env python3
"""Draw the pictures of docs/gain-orientation.md: a synthetic asymmetric gain and its eight
orientations, each named by RELION's ``--gain_rot`` / ``--gain_flip``.

Usage::

    python scripts/make_gain_orientation_figures.py          # rewrite docs/images/gain-orientation/
    python scripts/make_gain_orientation_figures.py DIR      # write them into DIR instead

The gain is :func:`cryotiff.simulate.gain_reference.asymmetric_sensitivity` without its
pixel-to-pixel spread and dead pixels (a bright letter F, a bright column, a dim row, slopes);
each picture is the gain turned by :func:`cryotiff.gain_check.apply_relion_flags`, the code
``--check_gain`` uses. Pictures show row 0 at the top, as ``relion_display`` does (IMOD's 3dmod
shows row 0 at the bottom, so there every picture is upside down). PNG via imagecodecs;
tests/test_check_gain.py checks that this script reproduces the committed pictures.
"""

from __future__ import annotations

import sys
from pathlib import Path

import imagecodecs
import numpy as np

from cryotiff.gain_check import ORIENTATIONS, apply_relion_flags
from cryotiff.simulate.gain_reference import asymmetric_sensitivity

REPOSITORY = Path(__file__).resolve().parents[1]
FIGURE_DIR = REPOSITORY / "docs" / "images" / "gain-orientation"
SHAPE_YX = (120, 160)  # a non-square detector: odd rotations turn it on its side
ZOOM = 2  # pixels drawn as 2 x 2 blocks, for legibility


def gain_picture() -> np.ndarray:
    """The synthetic gain as 8-bit grey levels (its own minimum black, maximum white)."""
    gain = asymmetric_sensitivity(SHAPE_YX, pixel_spread=0.0, n_dead_pixels=0).astype(np.float64)
    scaled = (gain - gain.min()) / (gain.max() - gain.min())
    grey = np.round(255 * scaled).astype(np.uint8)
    return np.kron(grey, np.ones((ZOOM, ZOOM), dtype=np.uint8))


def figure_name(gain_rot: int, gain_flip: int) -> str:
    return f"gain_rot{gain_rot}_flip{gain_flip}.png"


def write_figures(directory: Path) -> list[Path]:
    """Write one picture per orientation (``gain_rot0_flip0.png`` is the gain as read); return
    the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    picture = gain_picture()
    written = []
    for o in ORIENTATIONS:
        image = apply_relion_flags(picture, o.gain_rot, o.gain_flip)
        path = directory / figure_name(o.gain_rot, o.gain_flip)
        path.write_bytes(imagecodecs.png_encode(np.ascontiguousarray(image), level=9))
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else FIGURE_DIR
    for path in write_figures(directory):
        print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
