"""cryotiff: lossless conversion of cryo-EM movies (MRC, TIFF, EER) to compressed TIFF that RELION,
MotionCor2/3, cryoSPARC and Warp read directly; a drop-in for ``relion_convert_to_tiff``."""

from __future__ import annotations

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("cryotiff")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.1.0"

__all__ = ["__version__"]
