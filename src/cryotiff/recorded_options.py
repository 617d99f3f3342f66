"""What made each output TIFF, recorded in the file itself and read back.

Every TIFF cryotiff writes carries, in page 1's ImageDescription tag (270), one line of JSON::

    {"cryotiff_record": 1, "software": "cryotiff 0.1.0",
     "input": {"name": "FoilHole_1.eer", "bytes": 493817856},
     "made_with": {"eer_grouping": 40, "eer_upsampling": 1, "short": false},
     "sample_type": "uint8", "pages": 10, "codec": "lzw", "verified": true}

``made_with`` holds exactly the options that changed this movie's pixels, and only those that
apply to its kind (:meth:`cryotiff.convert.PageSource.pixel_options` decides):

=================================  ==========================================================
movie                              ``made_with``
=================================  ==========================================================
integer MRC or TIFF (copied)       ``{}``: no option changes its pixels
float without ``--gain``           ``{"gain": null}``
float with ``--gain``              ``{"gain": {"file", "sha256", "reliability_sha256"},
                                   "thresh", "lossy", "ignore_error"}``
EER                                ``{"eer_grouping", "eer_upsampling", "short"}``
                                   (``eer_grouping`` as used, also when it came from
                                   ``--eer_dose_per_fraction``)
=================================  ==========================================================

Options that do not change the decoded pixels (``--compression``, ``--deflate_level``,
``--line_by_line``, ``--j``, ``--no_verify``) are not compared; the codec and whether every strip
was verified are recorded for information. ``--gain`` for EER movies only writes
``gain-reference.mrc`` and does not change the TIFF, so it is not part of an EER record.

``--only_do_unfinished`` skips a movie only when its record matches what this run would do
(:func:`mismatch`); otherwise it converts it again and says why. A file without a record
(written by RELION or by an older cryotiff) is judged by its pages, frame size and sample type
alone when no option changes its pixels (integer MRC or TIFF); for EER and float movies it is
converted again, since the pages alone cannot show which grouping or gain made them.

Readers are unaffected: RELION's TIFF reader (``src/rwTIFF.h``) and libtiff-based readers
(MotionCor2, IMOD) do not interpret the tag, and tifffile treats a description as its own
"shaped" metadata only when it holds a ``"shape"`` key, which a record never does.

The API (also the base of a per-directory manifest): :class:`OutputRecord` (build, serialise
with :meth:`~OutputRecord.to_description`, read back with :meth:`~OutputRecord.from_description`
or :func:`read_record`) and :func:`mismatch`.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Mapping

#: Version of the record's layout; a record of another version is treated as absent.
RECORD_FORMAT = 1

#: The key that marks a description as cryotiff's record.
RECORD_KEY = "cryotiff_record"

#: The order in which options are compared (the first difference is the reason given).
_COMPARISON_ORDER = ("gain", "thresh", "lossy", "ignore_error", "eer_upsampling", "eer_grouping", "short")


@dataclass(frozen=True)
class OutputRecord:
    """What made one output TIFF.

    Attributes:
        made_with: the options that changed the pixels, by option name without ``--`` (see the
            module docstring); ``{}`` when none did.
        input_name: the input movie's file name (without its directory).
        input_bytes: the input movie's size in bytes when it was converted.
        sample_type: the TIFF's sample type (``uint8``, ``int16``, ``float32`` ...).
        n_pages: the number of pages written.
        codec: the compression used (``deflate-6``, ``lzw`` ...), for information.
        verified: every strip was decoded and compared with its frame before it was written.
        software: ``cryotiff <version>``.
    """

    made_with: Mapping[str, Any]
    input_name: str
    input_bytes: int
    sample_type: str = ""
    n_pages: int = 0
    codec: str = ""
    verified: bool = True
    software: str = field(default="")

    def to_description(self) -> str:
        """The record as page 1's ImageDescription: one line of 7-bit ASCII JSON."""
        text = json.dumps(
            {
                RECORD_KEY: RECORD_FORMAT,
                "software": self.software,
                "input": {"name": self.input_name, "bytes": self.input_bytes},
                "made_with": dict(self.made_with),
                "sample_type": self.sample_type,
                "pages": self.n_pages,
                "codec": self.codec,
                "verified": self.verified,
            },
            ensure_ascii=True,
            separators=(", ", ": "),
        )
        # tifffile reads a JSON description with a "shape" key as the shape of its series
        assert '"shape":' not in text
        return text

    @classmethod
    def from_description(cls, description: str | None) -> "OutputRecord | None":
        """The record held by an ImageDescription, or None (no description, another program's,
        another record version, or damaged: also options of the wrong type, such as
        ``"eer_grouping": "2"``)."""
        if not description or not description.startswith("{"):
            return None
        try:
            data = json.loads(description)
            if not isinstance(data, dict) or data.get(RECORD_KEY) != RECORD_FORMAT:
                return None
            source = data["input"]
            made_with = data["made_with"]
            if not isinstance(made_with, dict) or not all(_well_typed(name, v) for name, v in made_with.items()):
                return None
            return cls(
                made_with=made_with,
                input_name=str(source["name"]),
                input_bytes=int(source["bytes"]),
                sample_type=str(data.get("sample_type", "")),
                n_pages=int(data.get("pages", 0)),
                codec=str(data.get("codec", "")),
                verified=bool(data.get("verified", False)),
                software=str(data.get("software", "")),
            )
        except (ValueError, KeyError, TypeError):
            return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


#: What each option of ``made_with`` must hold; a record holding anything else is damaged.
_OPTION_TYPES = {
    "eer_grouping": _is_count,
    "eer_upsampling": _is_count,
    "short": lambda value: isinstance(value, bool),
    "lossy": lambda value: isinstance(value, bool),
    "ignore_error": lambda value: isinstance(value, bool),
    "thresh": lambda value: isinstance(value, (int, float)) and not isinstance(value, bool),
    "gain": lambda value: value is None or (isinstance(value, dict) and all(
        isinstance(value.get(key), str) for key in ("file", "sha256", "reliability_sha256"))),
}


def _well_typed(name: str, value: Any) -> bool:
    """Whether ``made_with[name]`` holds what this version writes there (options it does not
    know are kept as they are)."""
    check = _OPTION_TYPES.get(name)
    return check is None or bool(check(value))


def read_record(path: str | os.PathLike[str] | BinaryIO) -> OutputRecord | None:
    """The record of a TIFF file (a name, or a binary file object open on it, read from its
    start and left open), or None (none, or the file cannot be read)."""
    import tifffile

    from .io import open_regular_stream

    try:
        with (contextlib.nullcontext(path) if hasattr(path, "read") else open_regular_stream(path, "a TIFF file")) \
                as handle, tifffile.TiffFile(handle) as tif:
            return OutputRecord.from_description(tif.pages.first.description)
    except Exception:  # tifffile raises many types on damaged files; a named pipe is refused
        return None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, in hexadecimal (:func:`descriptor_sha256` of the file opened as
    inputs are, :func:`cryotiff.io.open_regular_file`: a named pipe at the name is refused with
    an InputError, never read).

    Raises:
        InputError: it is missing, unreadable or not a regular file.
        OSError: reading it failed.
    """
    from .io import open_regular_file
    from .io.digest import descriptor_sha256

    descriptor = open_regular_file(path, "a file")
    try:
        return descriptor_sha256(descriptor)[1]
    finally:
        os.close(descriptor)


def gain_identity(gain_path: Path, reliability_path: Path, hashed: Mapping[str, str] | None = None) -> dict[str, str]:
    """``made_with["gain"]`` of float movies converted with ``--gain``: the file as named, and
    the checksums of it and its reliability map (what is compared). ``hashed``: the checksums
    of the files as they were read (:meth:`cryotiff.gain.GainEstimate.load`), by path; a file
    not in it is hashed by name."""
    hashed = hashed or {}

    def sha256(path: Path) -> str:
        return hashed[str(path)] if str(path) in hashed else file_sha256(path)

    return {"file": str(gain_path), "sha256": sha256(gain_path), "reliability_sha256": sha256(reliability_path)}


def _same_option(name: str, recorded: Any, expected: Any) -> bool:
    if name == "gain" and isinstance(recorded, dict) and isinstance(expected, dict):
        return all(recorded.get(key) == expected.get(key) for key in ("sha256", "reliability_sha256"))
    return recorded == expected


def describe_option(name: str, value: Any) -> str:
    """An option as it was given: ``--eer_upsampling 2``, ``--short``, ``no --lossy``."""
    if name == "gain":
        if not value:
            return "no --gain"
        checksum = str(value.get("sha256", ""))[:12] if isinstance(value, dict) else ""
        return f"--gain {value.get('file', '?')} (SHA-256 {checksum}...)" if isinstance(value, dict) else "--gain"
    if value is None:
        return f"no --{name}"
    if isinstance(value, bool):
        return f"--{name}" if value else f"no --{name}"
    return f"--{name} {value}"


def mismatch(recorded: OutputRecord, expected: OutputRecord) -> str | None:
    """Why an output made as ``recorded`` is not what ``expected`` describes (this run's options
    for the same movie), or None when it is.

    Compared: the input's file name and size, then every option of ``made_with`` (a gain by its
    checksums, not its path). The reason reads like ``made with --eer_upsampling 1, this run
    asks for --eer_upsampling 2``.
    """
    if recorded.input_name != expected.input_name:
        return f"made from {recorded.input_name}, not from {expected.input_name}"
    if recorded.input_bytes != expected.input_bytes:
        return (f"made from {recorded.input_name} when it had {recorded.input_bytes} bytes; "
                f"it now has {expected.input_bytes}")
    names = set(recorded.made_with) | set(expected.made_with)
    ordered = [n for n in _COMPARISON_ORDER if n in names] + sorted(names - set(_COMPARISON_ORDER))
    for name in ordered:
        old, new = recorded.made_with.get(name), expected.made_with.get(name)
        if not _same_option(name, old, new):
            return f"made with {describe_option(name, old)}, this run asks for {describe_option(name, new)}"
    return None
