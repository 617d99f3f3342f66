"""``--check_gain``: which orientation and convention of a gain reference the movies show.

* :mod:`.orientation`: the eight orientations, RELION's ``--gain_rot`` / ``--gain_flip`` and
  MotionCor2/3's ``-RotGain`` / ``-FlipGain``;
* :mod:`.score`: the statistic (local contrast of the summed frames against the gain's);
* :mod:`.check`: reading the gain and the movies, the verdict, ``gain-reference.mrc`` and the
  ``--report`` section.

See docs/gain-orientation.md.
"""

from __future__ import annotations

from .check import GainCheckResult, check_gain, write_gain_reference
from .orientation import ORIENTATIONS, Orientation, apply_relion_flags, orientation_of

__all__ = ["GainCheckResult", "ORIENTATIONS", "Orientation", "apply_relion_flags", "check_gain",
           "orientation_of", "write_gain_reference"]
