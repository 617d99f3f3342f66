"""The built-in demo: a small synthetic movie of each detector kind, written as the acquisition
software would write it, and the user guide's recipe for each (``convert-to-tiff --demo``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .simulate.detectors import counting_frames, falcon_frames
from .simulate.eer import random_events, write_eer
from .simulate.gain_normalised import make_detector
from .simulate.write import write_mrc_movie

#: Gain-normalised movies: enough frames in all (3 x 24) for most pixels to pass RELION's
#: default ``--thresh`` of 50 consistent frames.
GAIN_NORMALISED_MOVIES = 3
GAIN_NORMALISED_FRAMES = 24
GAIN_NORMALISED_SHAPE_YX = (480, 464)

CAMERA_GAIN_NOTE = "the camera's gain reference, with the same rotation and flip as for the MRC"


@dataclass
class DemoMovie:
    """One synthetic movie: what it stands for and which gain reference its TIFF needs
    downstream (both printed by the demo)."""

    path: Path
    description: str
    gain_note: str = ""


@dataclass
class DemoRecipe:
    """One recipe of the user guide, applied to some of the demo movies.

    Attributes:
        title: the detector kind, as the user guide's heading names it.
        movies: the movies it converts.
        output_dir: its ``--o``.
        estimate_gain: run ``--estimate_gain`` first, then convert with
            ``--gain <output_dir>/gain_estimate.bin``.
        gain: the ``--gain`` file given with the movies (an EER ``.gain``).
    """

    title: str
    movies: list[DemoMovie]
    output_dir: Path
    estimate_gain: bool = False
    gain: Path | None = None

    @property
    def writes_gain_reference(self) -> bool:
        """Whether the conversion writes ``<output_dir>/gain-reference.mrc``."""
        return self.estimate_gain or self.gain is not None


def make_demo_movies(directory: Path, seed: int = 2024) -> list[Path]:
    """Write the demo movies into ``directory`` and return their paths (see :func:`demo_movies`)."""
    return [movie.path for movie in demo_movies(directory, seed)]


def demo_movies(directory: Path, seed: int = 2024) -> list[DemoMovie]:
    """Write the demo movies into ``directory``.

    * ``falcon4_counting.mrc``: Falcon-style blobs, uint16 (MRC mode 6), 4096 x 4096, 2 frames.
    * ``k2_counting.mrc``: K2 counts, int8 (MRC mode 0), quarter K2 size, 16 frames.
    * ``k3_superres_4bit.mrc``: K3-style super-resolution counts packed 4-bit (MRC mode 101),
      8 frames.
    * ``k2_gain_normalised_1.mrc`` .. ``_3.mrc``: counts x one per-pixel gain with
      defect-corrected pixels, float32 (MRC mode 2) as EPU/Digital Micrograph write them, 24
      frames each (the gain recipe of the user guide: ``--estimate_gain`` first, then ``--gain``).
    * ``falcon4.eer``: Falcon 4 electron events (EER, compression 65001), 4096 x 4096, 40 raw
      frames at 0.025 electrons per pixel per frame (one page at the default grouping of 40).
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    movies = []
    path = directory / "falcon4_counting.mrc"
    write_mrc_movie(path, falcon_frames(2, (4096, 4096), seed=rng), 6, pixel_size_angstrom=0.83)
    movies.append(DemoMovie(path, "Falcon 4 counting MRC, uint16 (mode 6)", "already gain-corrected: no gain reference"))
    path = directory / "k2_counting.mrc"
    write_mrc_movie(path, counting_frames(16, (960, 928), 0.96, np.int8, seed=rng), 0, pixel_size_angstrom=1.05)
    movies.append(DemoMovie(path, "K2 counting MRC, int8 (mode 0)", CAMERA_GAIN_NOTE))
    path = directory / "k3_superres_4bit.mrc"
    counts = counting_frames(8, (1023, 1441), 0.25, np.int8, seed=rng)
    write_mrc_movie(path, np.minimum(counts, 15), 101, pixel_size_angstrom=0.54)
    movies.append(DemoMovie(path, "K3 super-resolution MRC, 4-bit (mode 101)", CAMERA_GAIN_NOTE))
    detector = make_detector(GAIN_NORMALISED_SHAPE_YX, rng)
    for index in range(1, GAIN_NORMALISED_MOVIES + 1):
        path = directory / f"k2_gain_normalised_{index}.mrc"
        write_mrc_movie(path, detector.movie(GAIN_NORMALISED_FRAMES, rng).frames, 2, pixel_size_angstrom=1.05)
        movies.append(DemoMovie(path, "K2 gain-normalised MRC, float32 (mode 2)"))
    path = directory / "falcon4.eer"
    write_eer(path, random_events(rng, 4096, 40, 0.025), 4096)
    movies.append(DemoMovie(path, "Falcon 4 EER, 40 raw frames"))
    return movies


def write_eer_gain(path: Path, rng: np.random.Generator, size: int = 4096) -> Path:
    """A Falcon 4 style ``.gain``: a float32 TIFF, multiplicative (about 1.0), 0 at a few defects."""
    import tifffile

    gain = rng.normal(1.0, 0.03, (size, size)).astype(np.float32)
    gain.flat[rng.choice(gain.size, size=64, replace=False)] = 0.0
    tifffile.imwrite(path, gain, compression="zlib")
    return path


def demo_recipes(movies_dir: Path, output_dir: Path, seed: int = 2024) -> list[DemoRecipe]:
    """Write the demo movies (and the EER movie's ``.gain``) into ``movies_dir``; return the
    user guide's recipe for each kind, each into its own directory under ``output_dir``."""
    movies = demo_movies(movies_dir, seed)
    counting = [m for m in movies if m.path.suffix == ".mrc" and "gain_normalised" not in m.path.name]
    gain_normalised = [m for m in movies if "gain_normalised" in m.path.name]
    eer = [m for m in movies if m.path.suffix == ".eer"]
    eer_gain = write_eer_gain(movies_dir / "falcon4.gain", np.random.default_rng(seed + 1))
    return [
        DemoRecipe("Falcon MRC, K2/K3 counting MRC", counting, output_dir / "counting"),
        DemoRecipe("K2 gain-normalised float movies", gain_normalised, output_dir / "gain_normalised",
                   estimate_gain=True),
        DemoRecipe("Falcon 4 EER", eer, output_dir / "eer", gain=eer_gain),
    ]
