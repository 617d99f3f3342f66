"""Transitional: the gain module moved to :mod:`cryotiff.gain.estimate`; the next commit splits it."""

from .estimate import *  # noqa: F401,F403
from .estimate import __all__, _float32_tolerance, _write_mrc_temporary  # noqa: F401
