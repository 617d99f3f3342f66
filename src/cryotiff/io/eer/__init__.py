"""Reading and rendering EER (Electron Event Representation) movies, as RELION 5.0.1 does.

Three modules, one job each:

* :mod:`~cryotiff.io.eer.container`: the BigTIFF container: IFDs, the bitstream encoding of
  tag 259 (65000, 65001, 65002 with tags 65007-65009), the acquisition metadata of tag 65001,
  and each raw frame's data (:class:`~cryotiff.io.eer.container.EerContainer`);
* :mod:`~cryotiff.io.eer.decode`: a raw frame's bitstream -> its events (positions, sub-pixel
  symbols), complete or corrupt;
* :mod:`~cryotiff.io.eer.render`: grouping raw frames into pages, the upsampled output grid,
  and summing the events into pages (:class:`~cryotiff.io.eer.render.EerMovie`, the reader the
  conversion uses).

The compiled loops that walk the bitstreams are in :mod:`cryotiff.kernels`. Everything public is
importable from ``cryotiff.io.eer``.
"""

from cryotiff.io.eer.container import (
    COMPRESSION_EER_7BIT,
    COMPRESSION_EER_8BIT,
    COMPRESSION_EER_VARIABLE,
    EER_COMPRESSIONS,
    LEGACY_EER_FOOTER,
    SUPPORTED_DETECTOR_SIZES,
    TAG_HORIZONTAL_BITS,
    TAG_RLE_BITS,
    TAG_VERTICAL_BITS,
    EerContainer,
    EerEncoding,
    is_eer_path,
    max_frame_nbytes,
    sensor_pixel_size_angstrom,
)
from cryotiff.io.eer.decode import CorruptEerFrameError, decode_eer_frame, subpixels
from cryotiff.io.eer.render import (
    UPSAMPLING_VALUES,
    EerMovie,
    RenderResult,
    check_upsampling_value,
    corrupt_frame_warning,
    counts_dtype,
    found_frames_message,
    grouping_for_dose,
    max_count,
    output_size,
    plan_groups,
    rendering_message,
    symbol_offsets,
)

__all__ = [
    "COMPRESSION_EER_7BIT",
    "COMPRESSION_EER_8BIT",
    "COMPRESSION_EER_VARIABLE",
    "EER_COMPRESSIONS",
    "LEGACY_EER_FOOTER",
    "SUPPORTED_DETECTOR_SIZES",
    "TAG_HORIZONTAL_BITS",
    "TAG_RLE_BITS",
    "TAG_VERTICAL_BITS",
    "UPSAMPLING_VALUES",
    "CorruptEerFrameError",
    "EerContainer",
    "EerEncoding",
    "EerMovie",
    "RenderResult",
    "check_upsampling_value",
    "corrupt_frame_warning",
    "counts_dtype",
    "decode_eer_frame",
    "found_frames_message",
    "grouping_for_dose",
    "is_eer_path",
    "max_count",
    "max_frame_nbytes",
    "output_size",
    "plan_groups",
    "rendering_message",
    "sensor_pixel_size_angstrom",
    "subpixels",
    "symbol_offsets",
]
