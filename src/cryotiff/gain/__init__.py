"""Gains of gain-normalised float movies (K2/K3 from Digital Micrograph) and the gain files.

* :mod:`.estimate`: ``--estimate_gain``, RELION's per-pixel estimate (:class:`GainEstimate`),
  its per-frame update and the merge of estimates made in parallel (:func:`merge`);
* :mod:`.integerise`: using a gain, exactly (``--gain``: :func:`integerise`) or lossily
  (``--lossy``: :func:`lossy_integerise`), and integer-valued float frames;
* :mod:`.files`: the gain files under RELION's names and MRC layout (``gain_estimate.bin``, its
  reliability map, ``gain-reference.mrc``), every kind of ``--gain`` file read as RELION has it
  in memory, and RELION's messages about them.

The names the rest of cryotiff uses are importable from here (``from cryotiff.gain import ...``).
Nothing here imports numba: the compiled loops (:mod:`cryotiff.kernels`) are imported by the
calls that run them.
"""

from __future__ import annotations

from .estimate import (
    DEFAULT_THRESH,
    INCONSISTENT,
    INITIAL_GAIN,
    RELION_TOLERANCE_ABS,
    FrameStats,
    GainEstimate,
    _float32_tolerance,  # private, but shared with cryotiff.verify and the tests of the arithmetic
    expected_value,
    format_estimate_line,
    merge,
    merge_all,
    relion_int_round,
    round_half_away_from_zero,
    usable_gain,
)
from .files import (
    ESTIMATE_FIRST_WARNING,
    ESTIMATE_NEEDS_MODE2,
    GAIN_ESTIMATE_NAME,
    GAIN_IRRELEVANT_WARNING,
    GAIN_REFERENCE_NAME,
    GAIN_WRONG_SIZE,
    RELIABILITY_ESTIMATE_NAME,
    RELIABILITY_MAX,
    RELIABILITY_WRONG_SIZE,
    different_size_message,
    find_reliability_path,
    keep_or_write_gain_reference,
    kept_gain_reference_message,
    read_message,
    read_mrc_image,
    refuse_another_gain_reference,
    reliability_path_candidates,
    replaced_estimate_warning,
    resume_warning,
    updated_message,
    write_float_mrc,
    written_gain_reference_message,
)
from .integerise import (
    IMOD_4BIT_SIZES_WH,
    UNEXPECTED_PIXEL_VALUE,
    IntegeriseResult,
    LossyResult,
    LossyStats,
    format_mismatch_line,
    format_unnormalise_line,
    gain_reference,
    integer_range,
    integerise,
    lossy_integerise,
    reconstruct,
    smallest_integer_dtype,
)

__all__ = [
    "DEFAULT_THRESH",
    "ESTIMATE_FIRST_WARNING",
    "ESTIMATE_NEEDS_MODE2",
    "GAIN_ESTIMATE_NAME",
    "GAIN_IRRELEVANT_WARNING",
    "GAIN_REFERENCE_NAME",
    "GAIN_WRONG_SIZE",
    "INCONSISTENT",
    "INITIAL_GAIN",
    "IMOD_4BIT_SIZES_WH",
    "RELIABILITY_ESTIMATE_NAME",
    "RELIABILITY_MAX",
    "RELIABILITY_WRONG_SIZE",
    "RELION_TOLERANCE_ABS",
    "UNEXPECTED_PIXEL_VALUE",
    "FrameStats",
    "GainEstimate",
    "IntegeriseResult",
    "LossyResult",
    "LossyStats",
    "different_size_message",
    "expected_value",
    "find_reliability_path",
    "format_estimate_line",
    "format_mismatch_line",
    "format_unnormalise_line",
    "gain_reference",
    "integer_range",
    "integerise",
    "keep_or_write_gain_reference",
    "refuse_another_gain_reference",
    "kept_gain_reference_message",
    "lossy_integerise",
    "merge",
    "merge_all",
    "read_message",
    "read_mrc_image",
    "reconstruct",
    "relion_int_round",
    "replaced_estimate_warning",
    "reliability_path_candidates",
    "resume_warning",
    "round_half_away_from_zero",
    "smallest_integer_dtype",
    "updated_message",
    "usable_gain",
    "write_float_mrc",
    "written_gain_reference_message",
]
