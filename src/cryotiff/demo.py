"""The built-in demo: a small synthetic movie of each detector kind, written as the acquisition
software would write it, for ``convert-to-tiff --demo``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .simulate.detectors import counting_frames, falcon_frames
from .simulate.eer import random_events, write_eer
from .simulate.gain_normalised import make_detector
from .simulate.write import write_mrc_movie


def make_demo_movies(directory: Path, seed: int = 2024) -> list[Path]:
    """Write the demo movies into ``directory`` and return their paths.

    * ``falcon4_counting.mrc``: Falcon-style blobs, uint16 (MRC mode 6), 4096 x 4096, 2 frames.
    * ``k2_counting.mrc``: K2 counts, int8 (MRC mode 0), quarter K2 size, 16 frames.
    * ``k3_superres_4bit.mrc``: K3-style super-resolution counts packed 4-bit (MRC mode 101),
      8 frames.
    * ``k2_gain_normalised.mrc``: counts x a per-pixel gain with defect-corrected pixels, float32
      (MRC mode 2) as EPU/Digital Micrograph write it, 24 frames (see the gain recipe in the
      user guide: ``--estimate_gain`` first, then ``--gain``).
    * ``falcon4.eer``: Falcon 4 electron events (EER, compression 65001), 4096 x 4096, 40 raw
      frames at 0.025 electrons per pixel per frame (one page at the default grouping of 40).
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    path = directory / "falcon4_counting.mrc"
    write_mrc_movie(path, falcon_frames(2, (4096, 4096), seed=rng), 6, pixel_size_angstrom=0.83)
    paths.append(path)
    path = directory / "k2_counting.mrc"
    write_mrc_movie(path, counting_frames(16, (960, 928), 0.96, np.int8, seed=rng), 0, pixel_size_angstrom=1.05)
    paths.append(path)
    path = directory / "k3_superres_4bit.mrc"
    counts = counting_frames(8, (1023, 1441), 0.25, np.int8, seed=rng)
    write_mrc_movie(path, np.minimum(counts, 15), 101, pixel_size_angstrom=0.54)
    paths.append(path)
    path = directory / "k2_gain_normalised.mrc"
    detector = make_detector((960, 928), rng)
    write_mrc_movie(path, detector.movie(24, rng).frames, 2, pixel_size_angstrom=1.05)
    paths.append(path)
    path = directory / "falcon4.eer"
    write_eer(path, random_events(rng, 4096, 40, 0.025), 4096)
    paths.append(path)
    return paths
