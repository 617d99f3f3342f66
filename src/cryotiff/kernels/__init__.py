"""The compiled hot loops: per-event and per-pixel arithmetic that numpy would do in several
passes over a frame, each loop written once, compiled by numba. One module per job:

* :mod:`cryotiff.kernels.eer`: EER raw frames' bitstreams -> their events, recorded or added
  into a page, at every upsampling;
* :mod:`cryotiff.kernels.gain`: RELION's per-pixel gain arithmetic (estimation update,
  integerisation, lossy rounding) in float32;
* :mod:`cryotiff.kernels.deflate`: the Huffman-only Deflate encoder;
* :mod:`cryotiff.kernels.lzw`: the TIFF LZW encoder;
* :mod:`cryotiff.kernels.lzw_decode`: the TIFF LZW decoder that verifies that encoder's strips
  (written separately from it).

Every kernel is ``@njit(nogil=True, cache=True)`` (:mod:`cryotiff.kernels._jit`; ``eer_add_frames``
is a plain function that calls the compiled adder of its placement, each compiled when first used): it runs
without the GIL, so the page tasks of ``--j N`` threads run their kernels at the same time, and
the machine code is cached next to its file (``__pycache__``, or numba's user cache directory
where that is not writable) after the first run, so later runs only load it (without numba's
refresh of its whole target context, which loading does not need); an entry that cannot be
loaded (damaged, or written for a kernel of another module) is compiled again
(:mod:`cryotiff.kernels._jit`). Float division
follows IEEE (inf, NaN) as numpy and C do (numba's ``error_model="numpy"``). The loops are
plain Python over NumPy arrays; the callers (``cryotiff.io.eer``, ``cryotiff.gain``,
``cryotiff.codecs``) check shapes and types before calling, since a compiled loop does not
check its indices.

This package is a leaf: it imports only numpy and numba (and numba's llvmlite, for the LZW
decoder's word loads). That is why ``cryotiff.io`` may import
it (the rule that ``io/`` imports nothing from the package but ``errors`` has this one
exception: the EER reader's decoder lives here with the other compiled loops). Importing it
imports numba, so the modules that need a kernel import it where they call it. The tests check
every kernel against an independent reference on random inputs: RELION's EER loop transcribed
in plain Python and ``imagecodecs.eer_decode`` for the EER kernel, the earlier vectorised numpy
code for the gain kernels, zlib, ISA-L and libdeflate for the Deflate encoder, imagecodecs and
libtiff for the LZW encoder (``tests/test_kernels.py``) and decoder (``tests/test_lzw_decode.py``).
"""

from cryotiff.kernels.deflate import (
    DEFLATE_MAX_BITS,
    deflate_canonical_codes,
    deflate_code_lengths,
    deflate_huffman_bound,
    deflate_huffman_encode,
)
from cryotiff.kernels.eer import (
    EER_ADD_BINNED,
    EER_ADD_PHYSICAL,
    EER_ADD_UPSAMPLED,
    EER_COMPLETE,
    EER_CORRUPT,
    EER_PAUSED,
    EER_RECORD,
    EER_STATE_FIELDS,
    eer_add_frames,
    eer_place_events,
)
from cryotiff.kernels.gain import gain_integerise, gain_lossy_counts, gain_update
from cryotiff.kernels.lzw import LZW_CLEAR, LZW_EOI, LZW_FIRST, LZW_LAST, lzw_bound, lzw_encode
from cryotiff.kernels.lzw_decode import (
    LZW_DECODE_CORRUPT,
    LZW_DECODE_DIFFERENT,
    LZW_DECODE_ORIGIN,
    LZW_DECODE_OVERFLOW,
    LZW_DECODE_SAME,
    LZW_DECODE_TRUNCATED,
    LZW_SEGMENT_MAX_BYTES,
    lzw_check_buffer_bytes,
    lzw_decode_buffer_bytes,
    lzw_decode_into,
    lzw_decodes_to,
)

__all__ = [
    "DEFLATE_MAX_BITS",
    "EER_ADD_BINNED",
    "EER_ADD_PHYSICAL",
    "EER_ADD_UPSAMPLED",
    "EER_COMPLETE",
    "EER_CORRUPT",
    "EER_PAUSED",
    "EER_RECORD",
    "EER_STATE_FIELDS",
    "LZW_CLEAR",
    "LZW_DECODE_CORRUPT",
    "LZW_DECODE_DIFFERENT",
    "LZW_DECODE_ORIGIN",
    "LZW_DECODE_OVERFLOW",
    "LZW_DECODE_SAME",
    "LZW_DECODE_TRUNCATED",
    "LZW_EOI",
    "LZW_FIRST",
    "LZW_LAST",
    "deflate_canonical_codes",
    "deflate_code_lengths",
    "deflate_huffman_bound",
    "deflate_huffman_encode",
    "eer_add_frames",
    "eer_place_events",
    "gain_integerise",
    "gain_lossy_counts",
    "gain_update",
    "lzw_bound",
    "lzw_decode_buffer_bytes",
    "lzw_decode_into",
    "lzw_decodes_to",
    "lzw_encode",
]
