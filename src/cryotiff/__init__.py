"""cryotiff: lossless conversion of cryo-EM movies (MRC, TIFF, EER) to compressed TIFF that RELION,
MotionCor2/3, cryoSPARC and Warp read directly; a drop-in for ``relion_convert_to_tiff``."""

from __future__ import annotations

#: The package's version, the one place it is written (pyproject.toml reads it from here): asking
#: importlib.metadata at every start-up would cost about 60 ms of imports (email, zipfile, ...).
__version__ = "0.1.0"

__all__ = ["__version__"]
