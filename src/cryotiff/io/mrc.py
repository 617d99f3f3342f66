"""Reading MRC / MRCS movies (stacks of 2D frames), as ``relion_convert_to_tiff`` does, but safely.

Layout: a 1024-byte header, an extended header of ``NSYMBT`` bytes (skipped), then ``NZ`` frames
of ``NY`` rows of ``NX`` pixels. ``.mrc`` and ``.mrcs`` are both read as stacks (RELION does the
same): a file with ``NZ = 1`` is a 1-frame movie, and the space group (``ISPG``) is ignored, so a
"volume" of ``NZ`` sections is a movie of ``NZ`` frames.

MRC ``MODE`` word -> numpy dtype of the frames yielded (:data:`MODE_DTYPES`):

====  ==========================================  ===================================
mode  stored as                                    yielded as
====  ==========================================  ===================================
0     8-bit signed integer (RELION >= 3.1.3)       ``int8``
1     16-bit signed integer                        ``int16``
2     32-bit float                                 ``float32``
6     16-bit unsigned integer                      ``uint16``
12    16-bit float (IEEE half)                     ``float16`` (the pipeline widens it)
101   4-bit unsigned, packed two pixels per byte   ``int8`` values 0..15 (as RELION writes)
3, 4  complex                                      refused (:class:`MrcFormatError`)
====  ==========================================  ===================================

Mode 101 follows IMOD's layout: the first pixel of a byte is in its *low* nibble, and every row
occupies ``(NX + 1) // 2`` bytes, so odd-width rows end with 4 bits of padding. (RELION assumes
the nibbles run on across rows, which decodes odd widths wrongly; see the reference, section 15
item 8.)

The header is parsed by mrcfile in permissive mode (its complaints - missing ``MAP `` identifier,
unrecognised machine stamp - are recorded in ``MovieInfo.extra["header_warnings"]``, never
emitted as warnings). Big-endian files are read (RELION cannot convert them) and frames are
always returned in native byte order.

Frames are read with positional reads (``os.preadv``) straight into a fresh array rather than
through a memory map: this is thread-safe without a lock, costs one copy, and a file truncated
or replaced while it is open gives a clean :class:`MrcFormatError` instead of a SIGBUS. After each
frame the operating system is told that the next one will be read (``posix_fadvise``
``WILLNEED``), so that it reads it from the disk while this one is converted: a frame of a movie
that is not in the page cache then costs its copy, not the wait for the disk as well.
"""

from __future__ import annotations

import io
import math
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import mrcfile.utils
import numpy as np
from mrcfile.dtypes import HEADER_DTYPE
from mrcfile.mrcinterpreter import MrcInterpreter

from cryotiff.errors import InputError, MrcFormatError
from cryotiff.io import Movie, MovieInfo, open_regular_file, pread_exactly, will_need
from cryotiff.io.memory import refuse_frames_beyond_memory
from cryotiff.waking import SIGNAL_POLL_SECONDS

__all__ = [
    "HEADER_NBYTES",
    "MODE_DTYPES",
    "MAX_SIDE_PIXELS",
    "MAX_FRAMES",
    "MrcHeader",
    "MrcMovie",
    "open_mrc",
    "read_mrc_header",
    "read_mrc_mode",
    "read_mrc_image",
    "mode101_row_nbytes",
    "unpack_mode101",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Size of the fixed MRC header in bytes; the extended header (``NSYMBT`` bytes) follows it.
HEADER_NBYTES = 1024

#: MRC ``MODE`` -> dtype of the frames yielded by :class:`MrcMovie` (native byte order).
MODE_DTYPES: dict[int, np.dtype] = {
    0: np.dtype(np.int8),
    1: np.dtype(np.int16),
    2: np.dtype(np.float32),
    6: np.dtype(np.uint16),
    12: np.dtype(np.float16),
    101: np.dtype(np.int8),
}
_COMPLEX_MODES = (3, 4)

#: Largest ``NX`` or ``NY`` accepted; anything bigger is taken as a damaged header.
MAX_SIDE_PIXELS = 1 << 17
#: Largest ``NZ`` (frame count) accepted; anything bigger is taken as a damaged header.
MAX_FRAMES = 1 << 24

_NSYMBT_BYTE_OFFSET = 92  # int32 NSYMBT inside the 1024-byte header
_MAP_ID_BYTE_OFFSET = 208

_FOREIGN_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"II*\x00", "a TIFF file (little-endian)"),
    (b"MM\x00*", "a TIFF file (big-endian)"),
    (b"II+\x00", "a BigTIFF file"),
    (b"MM\x00+", "a BigTIFF file"),
    (b"\x1f\x8b", "gzip-compressed (decompress it first)"),
    (b"BZh", "bzip2-compressed (decompress it first)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed (decompress it first)"),
    (b"\xfd7zXZ\x00", "xz-compressed (decompress it first)"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
)


def mode101_row_nbytes(nx: int) -> int:
    """Bytes one row of ``nx`` 4-bit pixels occupies in a mode-101 file (IMOD: ``(nx + 1) // 2``)."""
    return (nx + 1) // 2


def unpack_mode101(packed: np.ndarray, nx: int) -> np.ndarray:
    """Unpack 4-bit pixels (low nibble first, rows padded to whole bytes) to ``int8`` values 0..15.

    Args:
        packed: ``uint8`` array of shape ``(..., ny, (nx + 1) // 2)``.
        nx: pixels per row (MRC header field ``NX``).

    Returns:
        A fresh C-contiguous ``int8`` array of shape ``(..., ny, nx)``.
    """
    packed = np.asarray(packed, dtype=np.uint8)
    row_nbytes = packed.shape[-1]
    unpacked = np.empty(packed.shape[:-1] + (2 * row_nbytes,), dtype=np.uint8)
    np.bitwise_and(packed, 0x0F, out=unpacked[..., 0::2])
    np.right_shift(packed, 4, out=unpacked[..., 1::2])
    if 2 * row_nbytes != nx:
        unpacked = np.ascontiguousarray(unpacked[..., :nx])
    return unpacked.view(np.int8)


@dataclass(frozen=True)
class MrcHeader:
    """The facts cryotiff uses from an MRC header (after byte-order detection).

    Attributes:
        nx, ny, nz: header fields ``NX`` (columns), ``NY`` (rows), ``NZ`` (sections = frames).
        mode: header field ``MODE``.
        mx: header field ``MX`` (sampling along X).
        cella_x_angstrom: header field ``CELLA.X`` (cell length along X, in angstroms).
        ispg: header field ``ISPG`` (space group; ignored for reading).
        nsymbt: header field ``NSYMBT`` (bytes of extended header after the 1024-byte header).
        exttyp: header field ``EXTTYP`` (for example ``"FEI1"``), decoded as ASCII.
        nversion: header field ``NVERSION``.
        byte_order: ``"<"`` or ``">"``, the byte order the header (and data) are read with.
        has_map_id: whether bytes 208..210 hold ``MAP`` (header field ``MAP``).
        warnings: header problems that were tolerated (from mrcfile's permissive reader and
            from cryotiff's own byte-order check).
    """

    nx: int
    ny: int
    nz: int
    mode: int
    mx: int
    cella_x_angstrom: float
    ispg: int
    nsymbt: int
    exttyp: str
    nversion: int
    byte_order: str
    has_map_id: bool
    warnings: tuple[str, ...]

    @property
    def pixel_size_angstrom(self) -> float | None:
        """``CELLA.X / MX`` when both are non-zero (and the result positive and finite), else None."""
        if self.mx == 0 or self.cella_x_angstrom == 0.0:
            return None
        pixel_size = self.cella_x_angstrom / self.mx
        if not math.isfinite(pixel_size) or pixel_size <= 0.0:
            return None
        return pixel_size


def _read_header_bytes(path: Path, fd: int | None = None) -> tuple[bytes, int]:
    """Return the first 1024 bytes of ``path`` and the file size in bytes, read through ``fd``
    (from :func:`cryotiff.io.open_regular_file`) when given."""
    if fd is None:
        fd = open_regular_file(path, "an MRC file")
        try:
            return _read_header_bytes(path, fd)
        finally:
            os.close(fd)
    try:
        file_nbytes = os.fstat(fd).st_size
        if file_nbytes == 0:
            raise MrcFormatError(f"{path}: the file is empty, not an MRC file.")
        raw = pread_exactly(fd, HEADER_NBYTES, 0)
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror or err}).") from None
    for magic, what in _FOREIGN_MAGIC:
        if raw.startswith(magic):
            raise MrcFormatError(f"{path}: is {what}, not an MRC file.")
    if len(raw) < HEADER_NBYTES:
        raise MrcFormatError(
            f"{path}: the file has only {len(raw)} bytes, shorter than the {HEADER_NBYTES}-byte MRC "
            "header; it is damaged or not an MRC file."
        )
    return raw, file_nbytes


def _mrcfile_byte_order(path: Path, raw: bytes) -> tuple[str, list[str]]:
    """Let mrcfile (permissive, header only) parse the header; return its byte order and complaints.

    mrcfile is given a copy of the header with NSYMBT zeroed, so it neither reads nor allocates
    the extended header (a damaged NSYMBT could otherwise make it allocate gigabytes). Zero is the
    same in both byte orders, so this does not influence its byte-order detection.
    """
    patched = bytearray(raw)
    patched[_NSYMBT_BYTE_OFFSET : _NSYMBT_BYTE_OFFSET + 4] = b"\x00\x00\x00\x00"
    complaints: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stream = io.BytesIO(bytes(patched))
            interpreter = MrcInterpreter(iostream=stream, permissive=True, header_only=True)
            byte_order = mrcfile.utils.normalise_byte_order(interpreter.header.mode.dtype.byteorder)
            stream.close()  # so that close() does not flush a header back into the private copy
            interpreter.close()
        complaints = [str(w.message) for w in caught]
    except Exception as err:  # mrcfile raises ValueError and friends; never let them escape
        raise MrcFormatError(f"{path}: mrcfile cannot parse the MRC header ({err}).") from None
    return byte_order, complaints


def _parse_header_fields(raw: bytes, byte_order: str) -> np.ndarray:
    return np.frombuffer(raw, dtype=HEADER_DTYPE.newbyteorder(byte_order), count=1)[0]


def _plausible(fields: np.ndarray, file_nbytes: int) -> bool:
    """Whether the header describes a readable movie that fits in ``file_nbytes`` bytes."""
    mode, nx, ny, nz = (int(fields[name]) for name in ("mode", "nx", "ny", "nz"))
    nsymbt = int(fields["nsymbt"])
    if not (
        mode in MODE_DTYPES
        and 0 < nx <= MAX_SIDE_PIXELS
        and 0 < ny <= MAX_SIDE_PIXELS
        and 0 < nz <= MAX_FRAMES
        and nsymbt >= 0
    ):
        return False
    row_nbytes = mode101_row_nbytes(nx) if mode == 101 else nx * MODE_DTYPES[mode].itemsize
    return HEADER_NBYTES + nsymbt + nz * ny * row_nbytes <= file_nbytes


def read_mrc_header(path: PathLike) -> MrcHeader:
    """Read and sanity-check the 1024-byte MRC header of ``path`` (the data are not read).

    The byte order is the one mrcfile infers (machine stamp, corrected by the MODE word). If the
    header does not describe a readable movie fitting in the file in that byte order (known
    mode, sane NX/NY/NZ/NSYMBT, data block within the file size) but does in the other (for
    example a big-endian file with a blank machine stamp, notably modes 0 and 101, which
    mrcfile's MODE-word check cannot decide), the other order is used and a warning recorded.
    No other check is made here: :func:`open_mrc` validates.

    mrcfile's complaints are captured with :func:`warnings.catch_warnings`, which (before Python
    3.14) is not thread-safe: open files from one thread, or accept that a warning raised by
    another thread at the same moment may be captured too.

    Raises:
        InputError: missing file, directory, unreadable file.
        MrcFormatError: empty or short file, not an MRC file.
    """
    path = Path(path)
    raw, file_nbytes = _read_header_bytes(path)
    return _header_from_bytes(path, raw, file_nbytes)


def _header_from_bytes(path: Path, raw: bytes, file_nbytes: int) -> MrcHeader:
    byte_order, complaints = _mrcfile_byte_order(path, raw)
    fields = _parse_header_fields(raw, byte_order)
    if not _plausible(fields, file_nbytes):
        other_order = ">" if byte_order == "<" else "<"
        other = _parse_header_fields(raw, other_order)
        if _plausible(other, file_nbytes):
            complaints.append(
                f"header is implausible in byte order '{byte_order}' but valid in "
                f"'{other_order}'; using '{other_order}'"
            )
            fields, byte_order = other, other_order
    exttyp = bytes(fields["exttyp"]).rstrip(b"\x00").decode("ascii", errors="replace")
    return MrcHeader(
        nx=int(fields["nx"]),
        ny=int(fields["ny"]),
        nz=int(fields["nz"]),
        mode=int(fields["mode"]),
        mx=int(fields["mx"]),
        cella_x_angstrom=float(fields["cella"]["x"]),
        ispg=int(fields["ispg"]),
        nsymbt=int(fields["nsymbt"]),
        exttyp=exttyp,
        nversion=int(fields["nversion"]),
        byte_order=byte_order,
        has_map_id=raw[_MAP_ID_BYTE_OFFSET : _MAP_ID_BYTE_OFFSET + 3] == b"MAP",
        warnings=tuple(complaints),
    )


def read_mrc_mode(path: PathLike) -> int:
    """Return the MRC header field ``MODE`` of ``path`` (cheap: reads 1024 bytes).

    Unlike RELION's ``checkMRCtype`` this detects big-endian headers. The mode is returned as
    found, even if it is not a valid MRC mode; :func:`open_mrc` does the full validation.
    """
    return read_mrc_header(path).mode


def _validate_header(path: Path, header: MrcHeader) -> None:
    """Raise MrcFormatError if the header cannot describe a readable movie."""
    if header.mode in _COMPLEX_MODES:
        raise MrcFormatError(
            f"{path}: MRC mode {header.mode} holds complex data, which cannot be converted "
            "(only real-space images can)."
        )
    if header.mode not in MODE_DTYPES:
        hint = "" if header.has_map_id else " (it also lacks the 'MAP ' identifier)"
        raise MrcFormatError(
            f"{path}: the header's MODE word is {header.mode}, which is not a valid MRC mode "
            f"(valid: 0, 1, 2, 6, 12, 101); the file is probably damaged or not an MRC file{hint}."
        )
    for name, value, limit in (
        ("NX", header.nx, MAX_SIDE_PIXELS),
        ("NY", header.ny, MAX_SIDE_PIXELS),
        ("NZ", header.nz, MAX_FRAMES),
    ):
        if value <= 0:
            raise MrcFormatError(
                f"{path}: the header's {name} is {value}; it must be positive. The file is "
                "damaged or not an MRC file."
            )
        if value > limit:
            raise MrcFormatError(
                f"{path}: the header's {name} is {value}, which is absurd (more than {limit}); "
                "the file is probably damaged."
            )
    if header.nsymbt < 0:
        raise MrcFormatError(
            f"{path}: the header's NSYMBT (extended header size) is {header.nsymbt}; it must not "
            "be negative. The file is damaged."
        )


def _frame_nbytes(header: MrcHeader) -> int:
    if header.mode == 101:
        return header.ny * mode101_row_nbytes(header.nx)
    return header.nx * header.ny * MODE_DTYPES[header.mode].itemsize


def _trailing_data_warnings(path: Path, header: MrcHeader, frame_nbytes: int, trailing_nbytes: int) -> tuple[str, ...]:
    """A warning when data follow the ``NZ`` frames: often more frames than the header says (a
    writer that did not update NZ), which a conversion of ``NZ`` frames would leave behind."""
    if trailing_nbytes <= 0:
        return ()
    whole, rest = divmod(trailing_nbytes, frame_nbytes)
    room = f"room for {whole} more frame{'s' if whole != 1 else ''}" + (f" and {rest} bytes" if rest else "")
    return (
        f"{path}: {trailing_nbytes} bytes follow the {header.nz} frame{'s' if header.nz != 1 else ''} "
        f"that the header's NZ announces ({room}); only the {header.nz} are converted. If the file "
        "holds more frames than NZ says, fix its header and convert it again.",
    )


class MrcMovie(Movie):
    """An MRC/MRCS movie opened for reading; see :func:`open_mrc`.

    ``read_frame`` returns a **fresh**, writeable, C-contiguous array in native byte order (never
    a view of the file). It is thread-safe: frames are read with positional reads, which share no
    file position, and :meth:`close` waits for reads in progress before closing the descriptor.
    """

    def __init__(self, path: Path, header: MrcHeader, file_nbytes: int, fd: int | None = None) -> None:
        """``fd``: the descriptor the header was read through (the movie owns it from now on);
        None opens ``path`` (:func:`cryotiff.io.open_regular_file`)."""
        self.header = header
        self._path = path
        self._data_offset = HEADER_NBYTES + header.nsymbt
        self._frame_nbytes = _frame_nbytes(header)
        self._file_dtype = MODE_DTYPES[header.mode]
        self._needs_swap = header.byte_order != mrcfile.utils.normalise_byte_order("=") and (
            self._file_dtype.itemsize > 1
        )
        expected_end = self._data_offset + header.nz * self._frame_nbytes
        trailing_nbytes = file_nbytes - expected_end
        self.info = MovieInfo(
            path=path,
            kind="mrc",
            n_frames=header.nz,
            shape_yx=(header.ny, header.nx),
            dtype=MODE_DTYPES[header.mode],
            mrc_mode=header.mode,
            pixel_size_angstrom=header.pixel_size_angstrom,
            frame_nbytes=self._frame_nbytes,
            extra={
                "byte_order": header.byte_order,
                "nsymbt": header.nsymbt,
                "exttyp": header.exttyp,
                "ispg": header.ispg,
                "nversion": header.nversion,
                "data_offset_bytes": self._data_offset,
                "trailing_bytes": trailing_nbytes,
                "header_warnings": header.warnings,
                "mx": header.mx,
                "cella_x_angstrom": header.cella_x_angstrom,
            },
            warnings=_trailing_data_warnings(path, header, self._frame_nbytes, trailing_nbytes),
        )
        self._condition = threading.Condition()
        self._active_reads = 0
        self._closed = False
        self._fd_open = True  # until close(), or the last read after a close() cut short
        self._room_checked = False
        self._fd = fd if fd is not None else open_regular_file(path, "an MRC file")

    def fileno(self) -> int:
        """The descriptor the frames are read through."""
        return self._fd

    def _check_room(self) -> None:
        """Before the first frame is allocated: refuse frames larger than the memory this
        process can still get (:func:`cryotiff.io.memory.refuse_frames_beyond_memory`).

        Raises:
            NotEnoughMemoryError: a frame does not fit.
        """
        self._room_checked = True
        ny, nx = self.info.shape_yx
        frame_nbytes = ny * nx * self.info.dtype.itemsize  # as yielded (mode 101: unpacked)
        refuse_frames_beyond_memory(self._path, (ny, nx), f"MRC mode {self.header.mode}, {self.info.dtype}",
                                    frame_nbytes)

    def _read_into(self, buffer: np.ndarray, offset: int) -> int:
        view = memoryview(buffer).cast("B")
        total = 0
        while total < len(view):
            if hasattr(os, "preadv"):
                got = os.preadv(self._fd, [view[total:]], offset + total)
            else:  # pragma: no cover - platforms without preadv
                data = os.pread(self._fd, len(view) - total, offset + total)
                got = len(data)
                view[total : total + got] = data
            if got == 0:
                break
            total += got
        return total

    #: ``read_frame`` takes ``out`` (see :class:`cryotiff.io.FrameRecycler`).
    reads_into = True

    def read_frame(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """Return frame ``index`` (0-based; MRC section ``index``) as a fresh ``(ny, nx)`` array,
        or read into ``out`` and return it.

        ``out``: an earlier frame of this movie that its user is done with. Reading into it
        saves the page faults of a fresh array (a 57 MB float32 frame: 31 ms fresh against 21 ms
        into an array used before). It is used only when it fits exactly (shape, the file's
        sample type in native order, C-contiguous, writeable) and the mode is not 101 (packed
        4-bit); otherwise a fresh array is read.

        Raises:
            IndexError: ``index`` outside ``0 .. n_frames - 1``.
            ValueError: the movie is closed.
            NotEnoughMemoryError: a frame is larger than the memory this process can still get
                (checked before the first frame is allocated).
            MrcFormatError: the file became shorter since it was opened.
            InputError: the operating system failed to read the file.
        """
        n_frames = self.info.n_frames
        if not 0 <= index < n_frames:
            raise IndexError(f"{self._path}: frame {index} out of range 0..{n_frames - 1}.")
        with self._condition:
            if self._closed:
                raise ValueError(f"{self._path}: read_frame on a closed movie.")
            self._active_reads += 1
        try:
            ny, nx = self.info.shape_yx
            if not self._room_checked and out is None:
                self._check_room()
            if self.header.mode == 101:
                buffer = np.empty((ny, mode101_row_nbytes(nx)), dtype=np.uint8)
            elif (out is not None and out.shape == (ny, nx) and out.dtype == self._file_dtype
                  and out.flags.c_contiguous and out.flags.writeable):
                buffer = out
            else:
                buffer = np.empty((ny, nx), dtype=self._file_dtype)
            offset = self._data_offset + index * self._frame_nbytes
            try:
                got = self._read_into(buffer, offset)
            except OSError as err:
                raise InputError(
                    f"{self._path}: reading frame {index + 1} failed ({err.strerror or err})."
                ) from None
            if index + 1 < n_frames:
                will_need(self._fd, offset + self._frame_nbytes, self._frame_nbytes)
        finally:
            with self._condition:
                self._active_reads -= 1
                self._condition.notify_all()
                if self._closed and not self._active_reads:
                    self._close_descriptor()  # close() was cut short by a Ctrl-C while this read ran
        if got < self._frame_nbytes:
            raise MrcFormatError(
                f"{self._path}: frame {index + 1} is incomplete ({got} of {self._frame_nbytes} bytes); "
                "the file was truncated after it was opened."
            )
        if self.header.mode == 101:
            return unpack_mode101(buffer, nx)
        if self._needs_swap:
            buffer.byteswap(inplace=True)
        return buffer

    def close(self) -> None:
        """Close the file descriptor (idempotent); waits for reads in progress to finish. A
        Ctrl-C meanwhile ends the wait (a read may hang on a stalled disk): the last of those
        reads then closes the descriptor."""
        with self._condition:
            if self._closed:
                return
            self._closed = True
            while self._active_reads:
                # Timed: a Ctrl-C whose signal reached another thread, or this one just before
                # the wait blocked, is acted upon only when the wait wakes.
                self._condition.wait(SIGNAL_POLL_SECONDS)
            self._close_descriptor()

    def _close_descriptor(self) -> None:
        """Close the descriptor once (called holding ``_condition``, with no read in progress)."""
        if self._fd_open:
            self._fd_open = False
            os.close(self._fd)

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and hasattr(self, "_fd"):
            try:
                self.close()
            except Exception:
                pass

    def __enter__(self) -> "MrcMovie":
        return self


def open_mrc(path: PathLike, fd: int | None = None) -> MrcMovie:
    """Open an MRC/MRCS movie: check its header and size, and return a :class:`MrcMovie`.

    ``info.n_frames`` = header ``NZ`` (1 for a single image); ``info.shape_yx`` = (``NY``,
    ``NX``); ``info.mrc_mode`` = ``MODE``; ``info.dtype`` = :data:`MODE_DTYPES` [``MODE``];
    ``info.pixel_size_angstrom`` = ``CELLA.X / MX`` when both are non-zero, else None (the
    pipeline applies RELION's 1.0 A default); ``info.frame_nbytes`` = bytes of one frame in the
    file (``NY * (NX + 1) // 2`` for mode 101). ``info.extra`` holds ``byte_order``, ``nsymbt``,
    ``exttyp``, ``ispg``, ``nversion``, ``data_offset_bytes`` (``1024 + NSYMBT``),
    ``trailing_bytes`` (bytes after the last frame, not converted; ``info.warnings`` says so),
    ``header_warnings``, and the header fields ``mx`` and ``cella_x_angstrom`` as found (the
    pipeline applies RELION's pixel size rule to them).

    ``fd``: ``path`` already open for reading (a regular file, as :func:`open_regular_file`
    checks), which the movie takes over (closed with it, or here on an error).

    Raises:
        InputError: missing file, directory, unreadable file.
        MrcFormatError: empty, short, foreign (TIFF, gzip, text ...) or damaged file; complex or
            unknown mode; non-positive or absurd dimensions; extended header or data block
            extending past the end of the file (the message says how many bytes are missing and
            how many frames are complete).
    """
    path = Path(path)
    if fd is None:
        fd = open_regular_file(path, "an MRC file")  # the header and the frames are read through it
    try:
        return _open_mrc(path, fd)
    except BaseException:
        os.close(fd)
        raise


def _open_mrc(path: Path, fd: int) -> MrcMovie:
    raw, file_nbytes = _read_header_bytes(path, fd)
    header = _header_from_bytes(path, raw, file_nbytes)
    _validate_header(path, header)
    data_offset = HEADER_NBYTES + header.nsymbt
    if data_offset > file_nbytes:
        raise MrcFormatError(
            f"{path}: the header announces an extended header of {header.nsymbt} bytes (NSYMBT), "
            f"but the file has only {file_nbytes} bytes; the file is truncated or damaged."
        )
    frame_nbytes = _frame_nbytes(header)
    expected_nbytes = header.nz * frame_nbytes
    available_nbytes = file_nbytes - data_offset
    if available_nbytes < expected_nbytes:
        complete = available_nbytes // frame_nbytes
        raise MrcFormatError(
            f"{path}: the file is truncated: its data block should hold {header.nz} frames of "
            f"{header.ny} x {header.nx} pixels (mode {header.mode}), {expected_nbytes} bytes, but "
            f"only {available_nbytes} bytes follow the headers ({expected_nbytes - available_nbytes} "
            f"bytes missing; {complete} of {header.nz} frames complete)."
        )
    return MrcMovie(path, header, file_nbytes, fd)


def read_mrc_image(path: PathLike) -> tuple[np.ndarray, float | None]:
    """Read the first section of an MRC file (for example a gain reference) as ``float32``.

    Returns:
        ``(image, pixel_size_angstrom)``: a fresh ``(NY, NX)`` float32 array and ``CELLA.X / MX``
        (None when the header carries no pixel size).
    """
    with open_mrc(path) as movie:
        image = movie.read_frame(0).astype(np.float32)
        return image, movie.info.pixel_size_angstrom
