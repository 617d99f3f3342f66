"""Gain files: the ``--estimate_gain`` pair (``gain_estimate.bin`` and its reliability map, under
RELION's names and MRC layout, so that RELION and cryotiff read each other's files), every kind
of ``--gain`` file read as RELION has it in memory, ``<o>/gain-reference.mrc`` (written, kept or
refused, never replaced), and RELION's messages about them (returned as text: the library never
prints).

Deliberate differences from RELION 5.0.1 (each is marked ``DIFFERENCE`` where it is made):

* gain files are written atomically (temporary file + ``os.replace``, with the permissions
  ``open()`` gives under the umask), in an order that never leaves a pixel reliable on evidence
  that does not exist; a save that fails (full disk, read-only directory) leaves the previous
  pair as it was (see :func:`save_estimate_pair`);
* the reliability map is also found under the documented spelling ``_reliability``;
* the reliability map name is derived from the file name only (a dot in a directory name does
  not count as the extension);
* an existing ``gain-reference.mrc`` is never replaced (:func:`keep_or_write_gain_reference`).

This module imports nothing from the rest of :mod:`cryotiff.gain`.
"""

from __future__ import annotations

import os
import stat
import threading
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from cryotiff.errors import CryotiffError, ExistingOutputError, GainError, OutputError
from cryotiff.io import check_regular_file, open_regular_stream
from cryotiff.io.atomic import AtomicFile, CheckedDirectory, fsync_directory, open_directory
from cryotiff.io.mrc import open_mrc
from cryotiff.waking import wait_for_event

#: Largest reliability counter (int16's, the type of the reliability map); cryotiff saturates
#: there (RELION's int16 wraps).
RELIABILITY_MAX = 32767

#: Files written by ``--estimate_gain`` (RELION's names, including its misspelling, so that
#: RELION and cryotiff can read each other's files).
GAIN_ESTIMATE_NAME = "gain_estimate.bin"
RELIABILITY_ESTIMATE_NAME = "gain_estimate_reliablity.bin"
#: Gain reference written next to the converted movies.
GAIN_REFERENCE_NAME = "gain-reference.mrc"
#: RELION's spelling of the reliability suffix, and the documented one (also accepted).
RELIABILITY_SUFFIX_RELION = "_reliablity"
RELIABILITY_SUFFIX_DOCUMENTED = "_reliability"

#: RELION's message texts (``src/tiff_converter.cpp``; docs/relion-behaviour.md). Errors carry them
#: as the first sentence.
GAIN_WRONG_SIZE = "The input gain has a wrong size."
RELIABILITY_WRONG_SIZE = "The input reliability map has a wrong size."
ESTIMATE_NEEDS_MODE2 = "The input movie is not in mode 2 MRC(S) file. Gain estimation does not make sense."
GAIN_IRRELEVANT_WARNING = "The input movie is not in mode 2. A gain reference is irrelavant."  # sic
ESTIMATE_FIRST_WARNING = (
    "WARNING: To effectively compress mode 2 MRC files, you should first estimate the gain with --estimate_gain."
)
#: What RELION asks of the user after writing ``gain-reference.mrc`` (cryotiff also after keeping it).
USE_AS_GAIN_REFERENCE = "Please use this file as a gain reference when processing the converted movies."

# Rows per block where a whole map is worked on a block at a time (small temporaries).
_DEFAULT_BLOCK_ROWS = 256

# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------


def read_message(path: str | os.PathLike[str]) -> str:
    """``Read <file>``: printed (stdout, rank 0) after reading the gain and after the
    reliability map; RELION prints an empty line after the second one."""
    return f"Read {os.fspath(path)}"


def _out_prefix(out_dir: str | os.PathLike[str]) -> str:
    # RELION's <out> is --o with a trailing slash appended when missing.
    prefix = os.fspath(out_dir)
    return prefix if prefix.endswith("/") else prefix + "/"


def updated_message(out_dir: str | os.PathLike[str]) -> str:
    """RELION's stdout text after every estimated movie, starting with a newline:
    ``"\\nUpdated <out>gain_estimate.bin and <out>gain_estimate_reliablity.bin"``.
    Print it, then an empty line (``print(msg); print()``)."""
    out = _out_prefix(out_dir)
    return f"\nUpdated {out}{GAIN_ESTIMATE_NAME} and {out}{RELIABILITY_ESTIMATE_NAME}"


def resume_warning(gain_path: str | os.PathLike[str]) -> str:
    """The warning of ``--estimate_gain --gain X`` (DIFFERENCE: RELION says nothing). A saved
    estimate does not record which movies went into it, so each movie given is added again; a
    movie counted twice makes its pixels reach ``--thresh`` on repeated evidence."""
    return (
        f"WARNING: --estimate_gain resumes from {os.fspath(gain_path)}: every movie given is added to that "
        "estimate, and one that is already in it is counted twice (its pixels then become reliable on "
        "repeated evidence). Give only movies that are not in it yet; the --report of the earlier run "
        "lists those that are."
    )


def replaced_estimate_warning(out_dir: str | os.PathLike[str], gain_path: str | os.PathLike[str] | None) -> str | None:
    """The warning of an ``--estimate_gain`` run whose ``<o>/gain_estimate.bin`` exists and is not
    the ``--gain`` it resumes from (DIFFERENCE: RELION replaces it silently): the saved estimate,
    perhaps of many movies, is replaced after the first movie by one without them. None when
    there is none, or it is resumed."""
    existing = Path(out_dir) / GAIN_ESTIMATE_NAME
    if not existing.exists():
        return None
    if gain_path is not None and os.path.exists(gain_path) and os.path.samefile(existing, gain_path):
        return None
    start = f"the estimate of {os.fspath(gain_path)}" if gain_path is not None else "a new estimate"
    return (f"WARNING: {existing} exists; after the first movie it is replaced by {start} with the movies given, "
            f"without the movies in it now. To add the movies to it instead, give --gain {existing}.")


def written_message(path: str | os.PathLike[str]) -> str:
    """RELION's stdout line after writing the gain reference ``path``:
    ``Written <path>. Please use this file as a gain reference ...``."""
    return f"Written {os.fspath(path)}. {USE_AS_GAIN_REFERENCE}"


def written_gain_reference_message(out_dir: str | os.PathLike[str]) -> str:
    """RELION's stdout line after writing ``<out>gain-reference.mrc``; print it, then an empty line."""
    return written_message(f"{_out_prefix(out_dir)}{GAIN_REFERENCE_NAME}")


def kept_gain_reference_message(path: str | os.PathLike[str]) -> str:
    """The line for a ``gain-reference.mrc`` that already held the gain reference of this run
    (kept, not written again); print it, then an empty line."""
    return f"Kept (identical) {os.fspath(path)}. {USE_AS_GAIN_REFERENCE}"


def different_size_message(movie: str) -> str:
    """RELION's error text for a movie whose frame size differs from the gain's."""
    return f"The movie {movie} has a different size from others."


def _row_blocks(n_rows: int, block_rows: int) -> list[slice]:
    """Slices of at most ``block_rows`` rows covering ``n_rows`` (also the estimate's row blocks)."""
    block_rows = max(1, int(block_rows))
    return [slice(start, min(start + block_rows, n_rows)) for start in range(0, n_rows, block_rows)]


# ---------------------------------------------------------------------------------------------
# The --estimate_gain pair: gain_estimate.bin and gain_estimate_reliablity.bin
# ---------------------------------------------------------------------------------------------


def reliability_path_candidates(gain_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(<gain without last extension>_reliablity.<ext>, ..._reliability.<ext>)``.

    RELION's spelling first. DIFFERENCE: the extension is taken from the file name only; a name
    without a dot gets the suffix appended (RELION would find a dot in a directory name).
    """
    path = Path(gain_path)
    name = path.name
    if "." in name:
        stem, ext = name.rsplit(".", 1)
        names = (f"{stem}{RELIABILITY_SUFFIX_RELION}.{ext}", f"{stem}{RELIABILITY_SUFFIX_DOCUMENTED}.{ext}")
    else:
        names = (name + RELIABILITY_SUFFIX_RELION, name + RELIABILITY_SUFFIX_DOCUMENTED)
    return path.with_name(names[0]), path.with_name(names[1])


def find_reliability_path(gain_path: str | os.PathLike[str]) -> Path:
    """The reliability map belonging to ``gain_path`` (RELION's spelling preferred).

    Raises:
        GainError: neither spelling exists.
    """
    relion_name, documented_name = reliability_path_candidates(gain_path)
    for candidate in (relion_name, documented_name):
        if candidate.is_file():
            return candidate
    raise GainError(
        f"The reliability map of the gain {os.fspath(gain_path)} is missing: expected {relion_name} "
        f"(or {documented_name.name}). It is written next to {GAIN_ESTIMATE_NAME} by --estimate_gain."
    )


def read_mrc_image(path: str | os.PathLike[str], what: str = "gain", *, as_float: bool = True,
                   hashed: dict[str, str] | None = None, dir_fd: int | None = None) -> np.ndarray:
    """Read a single-image MRC file whatever its extension (RELION reads ``<file>:mrc``), with
    cryotiff's MRC reader (lenient like RELION's: any map ID or machine stamp, byte order by
    plausibility).

    Returns float32 (``as_float``) or the mode's own dtype (int16 for mode 1, ...). With
    ``hashed``, ``hashed[str(path)]`` becomes the SHA-256 of the file read, hashed through the
    descriptor it was read from (never the name, which another file may have taken since).
    ``dir_fd``: a descriptor of ``path``'s directory (as the run checked it), in which its name
    is opened (a symbolic link there is followed, as by name).

    Raises:
        GainError: missing, unreadable, or more than one section, or (with ``hashed``) changed
            while it was read; the message names the file.
    """
    path = Path(path)
    if dir_fd is None:
        if not path.exists():
            raise GainError(f"The {what} file {path} does not exist.")
        check_regular_file(path, f"a {what} file", GainError)  # a directory, a named pipe
    try:
        with open_mrc(path, _open_in_directory(path, dir_fd, what) if dir_fd is not None else None) as mrc:
            before = os.fstat(mrc.fileno())
            n_sections = mrc.info.n_frames
            data = mrc.read_frame(0) if n_sections == 1 else None
            if hashed is not None and data is not None:
                hashed[str(path)] = _sha256_of_file_read(mrc.fileno(), before, path, what)
    except CryotiffError as exc:
        if isinstance(exc, GainError):
            raise
        raise GainError(f"Cannot read the {what} file {path} as MRC: {exc}") from exc
    except OSError as exc:
        raise GainError(f"The {what} file {path} cannot be read ({exc.strerror or exc})") from None
    if data is None:
        raise GainError(f"The {what} file {path} must hold one 2-D image; it has {n_sections} sections.")
    data = np.asarray(data, dtype=np.float32) if as_float else np.asarray(data)
    # read_frame gives a fresh array: copy only to make it native-endian and C-ordered
    return np.asarray(data, dtype=data.dtype.newbyteorder("="), order="C")


def _open_in_directory(path: Path, dir_fd: int, what: str) -> int:
    """``path``'s name opened for reading in the directory ``dir_fd`` (never blocking on a named
    pipe), a regular file; the caller closes the descriptor.

    Raises:
        GainError: missing, unreadable or not a regular file; the message names the file.
    """
    try:
        fd = os.open(path.name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), dir_fd=dir_fd)
    except FileNotFoundError:
        raise GainError(f"The {what} file {path} does not exist.") from None
    except OSError as exc:
        raise GainError(f"The {what} file {path} cannot be read ({exc.strerror or exc})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise GainError(f"The {what} file {path} is not a regular file.")
        os.set_blocking(fd, True)  # reads wait for the disk as usual
    except BaseException:
        os.close(fd)
        raise
    return fd


def _sha256_of_file_read(descriptor: int, before: os.stat_result, path: Path, what: str) -> str:
    """The SHA-256 of the file open on ``descriptor`` (os.pread), which must not have changed
    since ``before`` (its fstat when opened): else the hash would not be of the data read."""
    from ..io.digest import descriptor_sha256

    n_bytes, digest = descriptor_sha256(descriptor)
    after = os.fstat(descriptor)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or n_bytes != after.st_size:
        raise GainError(f"The {what} file {path} changed while it was read; give it again once it is complete.")
    return digest


def _to_int16_counter(raw: np.ndarray, path: Path) -> np.ndarray:
    """Reliability values as int16. Integer data is saturated to the int16 range; float data
    must be whole numbers (RELION casts whatever it finds). Converted a row block at a time, so
    that no wider copy of the whole map is made (an int64 one would be 8 bytes a pixel)."""
    if raw.dtype == np.int16:
        return raw  # already the counters' type and range (RELIABILITY_MAX is int16's maximum)
    counters = np.empty(raw.shape, np.int16)
    for rows in _row_blocks(raw.shape[0], _DEFAULT_BLOCK_ROWS):
        if np.issubdtype(raw.dtype, np.integer):
            counters[rows] = np.clip(raw[rows].astype(np.int64), -32768, RELIABILITY_MAX)
            continue
        values = raw[rows].astype(np.float64)
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.trunc(values)):
            raise GainError(f"The reliability map {path} holds values that are not whole numbers.")
        counters[rows] = np.clip(values, -32768, RELIABILITY_MAX)
    return counters


def read_estimate_pair(
    gain_path: str | os.PathLike[str], shape_yx: tuple[int, int] | None = None,
    hashed: dict[str, str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(gain, reliability)`` of a saved estimate, as RELION's ``--gain`` reads them: the gain as
    MRC whatever its extension, converted to float32, and its reliability map
    (:func:`find_reliability_path`), converted to int16. ``hashed``: given the SHA-256 of each
    file read, by its path as a string (:func:`read_mrc_image`).

    Raises:
        GainError: a file is missing, unreadable, not a single image, of a size other than
            ``shape_yx`` (when given) or the two differ in size. The message names the file.
    """
    gain_path = Path(gain_path)
    gain = read_mrc_image(gain_path, "gain", hashed=hashed)
    if shape_yx is not None and gain.shape != tuple(shape_yx):
        raise GainError(
            f"{GAIN_WRONG_SIZE} {gain_path} is {gain.shape[1]} x {gain.shape[0]} pixels, "
            f"the movies are {shape_yx[1]} x {shape_yx[0]}."
        )
    rel_path = find_reliability_path(gain_path)
    raw = read_mrc_image(rel_path, "reliability map", as_float=False, hashed=hashed)
    if raw.shape != gain.shape:
        raise GainError(
            f"{RELIABILITY_WRONG_SIZE} {rel_path} is {raw.shape[1]} x {raw.shape[0]} pixels, "
            f"the gain {gain_path} is {gain.shape[1]} x {gain.shape[0]}."
        )
    return gain, _to_int16_counter(raw, rel_path)


def save_estimate_pair(
    out_dir: str | os.PathLike[str], gain: np.ndarray, reliability: np.ndarray, *, fsync: bool = True
) -> tuple[Path, Path]:
    """Atomically rewrite ``<out_dir>/gain_estimate.bin`` (MRC mode 2, nz = 1) and
    ``<out_dir>/gain_estimate_reliablity.bin`` (MRC mode 1, nz = 1) with ``gain`` (float32) and
    ``reliability`` (int16), both ``(ny, nx)``; cella = (nx, ny, 1) as RELION writes for an
    unknown pixel size. Returns ``(gain_path, reliability_path)``.

    Each file is written to a temporary file in ``out_dir`` and moved over the old one with
    ``os.replace``. Two files cannot be replaced together, so when the previous pair is
    readable and some gains changed, three replacements are made: (1) the reliability map
    with the new counters, but with ``min(counter, 0)`` where the gain changed; (2) the new
    gain; (3) the final reliability map. Interrupted at any moment, the pair on disk is the
    previous pair, the new pair, or a pair in which every pixel whose gain changed has a
    counter of 0 or -1, which is a state RELION itself passes through (the gain was just set).
    No pixel is then reliable on evidence it does not have, and a resumed estimation goes on
    normally.

    Every temporary file is written (and ``fsync``-ed) before the first replacement, so a
    save that cannot be written (full disk, quota, read-only directory) changes nothing: the
    previous pair stays as it was, the temporary files are removed, and the error says so.
    Temporary files are also removed on KeyboardInterrupt.

    Raises:
        OutputError: a file cannot be written or renamed.
    """
    out = Path(out_dir)
    gain_path = out / GAIN_ESTIMATE_NAME
    rel_path = out / RELIABILITY_ESTIMATE_NAME
    old_gain = _read_gain_if_same_shape(gain_path, gain.shape)
    if old_gain is None:
        # No readable previous gain: a pair with it cannot be loaded anyway, so write the
        # reliability map first and the gain last.
        replacements = [(rel_path, reliability), (gain_path, gain)]
    else:
        changed = _changed_gains(old_gain, gain)
        del old_gain  # before the interim map: the save holds one extra map at a time
        replacements = [(gain_path, gain), (rel_path, reliability)]
        if changed.any():
            interim = reliability.copy()
            np.minimum(interim, 0, out=interim, where=changed)
            replacements.insert(0, (rel_path, interim))
        del changed
    written: list[AtomicFile] = []
    # Each file goes to the disk (fsync) on a thread of its own while the next one is made (its
    # header statistics are most of the work); all of them before the first rename.
    flushes: list[_BackgroundFsync] = []
    try:
        try:
            for path, data in replacements:
                flush = None
                if fsync:
                    flush = _BackgroundFsync()
                    flushes.append(flush)
                    flush.start()
                written.append(_write_mrc_temporary(path, data, voxel_size_angstrom=1.0, fsync=False))
                if flush is not None:
                    flush.hand(written[-1])
            for flush in flushes:
                wait_for_event(flush.flushed)  # an fsync may take minutes
                if flush.problem is not None:
                    problem = flush.problem
                    raise OutputError(f"{flush.target.destination}: cannot write ({problem.strerror or problem})")
        except OutputError as exc:
            raise OutputError(f"{exc}; the saved {gain_path} and {rel_path.name} are unchanged") from None
        for target in written:
            target.commit()
            if fsync:  # each rename on the disk before the next: the order above holds after a power cut
                fsync_directory(out)
    finally:
        # Every fsync ends before a temporary file is removed and closed (after an error or
        # Ctrl-C): a Ctrl-C meanwhile waits for them too (they take as long as the disk does).
        for flush in flushes:
            flush.hand_nothing_more()
        _wait_through_interrupts([flush.flushed for flush in flushes if flush.target is not None])
        for target in written:
            target.discard()  # those not renamed (after an error)
    return gain_path, rel_path


class _BackgroundFsync:
    """``fsync`` of one temporary file on a thread of its own (fsync releases the GIL): ``flushed``
    is set once it has ended, and ``problem`` then holds the OSError it raised, if any. (An
    event, not ``Thread.join``: a KeyboardInterrupt in the middle of ``join`` makes Python 3.11
    take the thread for ended for good, while it still runs.)

    The thread is started before its file is written and handed the file afterwards: a Ctrl-C
    in ``Thread.start()`` (which waits for the new thread to run, long on a loaded machine) then
    leaves a thread with no file, never one fsyncing a file that the save, not holding the
    thread yet, closes under it. A thread handed no file ends at ``hand_nothing_more()``."""

    def __init__(self) -> None:
        self.target: AtomicFile | None = None
        self.problem: OSError | None = None
        self.flushed = threading.Event()
        self._handed = threading.Event()
        self._thread = threading.Thread(target=self._flush, name="cryotiff-fsync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def hand(self, target: AtomicFile) -> None:
        """Give the thread its written file to fsync; called once ``start()`` has returned, so
        that a file handed is a file whose fsync runs (and sets ``flushed``)."""
        self.target = target
        self._handed.set()

    def hand_nothing_more(self) -> None:
        self._handed.set()

    def _flush(self) -> None:
        self._handed.wait()
        try:
            if self.target is not None:
                os.fsync(self.target.handle.fileno())
        except OSError as exc:
            self.problem = exc
        finally:
            self.flushed.set()


def _wait_through_interrupts(events: list[threading.Event]) -> None:
    """Wait until every event is set, also through KeyboardInterrupt (Ctrl-C, SIGTERM), which
    is raised again once they are."""
    interrupt: KeyboardInterrupt | None = None
    for event in events:
        while True:
            try:
                event.wait()
                break
            except KeyboardInterrupt as exc:
                interrupt = interrupt or exc
    if interrupt is not None:
        raise interrupt


def _changed_gains(old_gain: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Where ``gain`` differs from ``old_gain`` (NaN equals NaN), a row block at a time (no
    full-size temporaries besides the result)."""
    changed = np.empty(gain.shape, bool)
    for rows in _row_blocks(gain.shape[0], _DEFAULT_BLOCK_ROWS):
        old, new = old_gain[rows], gain[rows]
        changed[rows] = ~((old == new) | (np.isnan(old) & np.isnan(new)))
    return changed


def _read_gain_if_same_shape(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        gain = read_mrc_image(path, "gain")
    except GainError:
        return None
    return gain if gain.shape == shape else None


def _write_mrc_temporary(path: Path, data: np.ndarray, *, voxel_size_angstrom: float, fsync: bool,
                         directory: CheckedDirectory | int | None = None) -> AtomicFile:
    """Write ``data`` as an MRC file into a fresh temporary file beside ``path``
    (:class:`cryotiff.io.atomic.AtomicFile`; in ``directory``, ``path``'s directory as the run
    checked it or a descriptor of it, if given); the caller renames it with ``commit()``.

    Raises:
        OutputError: the file cannot be created or written (its temporary file is removed).
    """
    from mrcfile.mrcinterpreter import MrcInterpreter

    target = AtomicFile(path, directory)
    try:
        with warnings.catch_warnings():
            # mrcfile warns when the data hold NaN (the header statistics become NaN); the
            # library never prints.
            warnings.simplefilter("ignore", RuntimeWarning)
            # mrcfile's documented way to write a stream it did not open
            mrc = MrcInterpreter()
            mrc._iostream = target.handle
            mrc._create_default_attributes()
            mrc.set_data(data)  # mode from dtype; nx, ny; nz = 1; amin/amax/amean/rms
            mrc.voxel_size = voxel_size_angstrom  # cella = n * pixel size
            mrc.close()  # writes it all; also keeps its __del__ from writing it again
        target.handle.flush()
        if fsync:
            os.fsync(target.handle.fileno())
    except OSError as exc:
        target.discard()
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        target.discard()
        raise
    return target


def _atomic_write_mrc(path: Path, data: np.ndarray, *, voxel_size_angstrom: float, fsync: bool) -> None:
    """Write ``data`` as the MRC file ``path``, atomically (a temporary file, then a rename).

    Raises:
        OutputError: the file cannot be written or renamed.
    """
    target = _write_mrc_temporary(Path(path), data, voxel_size_angstrom=voxel_size_angstrom, fsync=fsync)
    try:
        target.commit()
        if fsync:
            fsync_directory(Path(path).parent)
    finally:
        target.discard()


# ---------------------------------------------------------------------------------------------
# <o>/gain-reference.mrc
# ---------------------------------------------------------------------------------------------


def _same_image(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit (NaN and -0.0 included)."""
    a, b = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)
    return a.shape == b.shape and bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))


def keep_or_write_gain_reference(
    path: str | os.PathLike[str],
    reference: np.ndarray,
    *,
    made_from: str,
    gain_path: str | os.PathLike[str] | None = None,
    dependents: Callable[[], str] | None = None,
    directory: CheckedDirectory | None = None,
) -> bool:
    """Write ``reference`` as ``path`` (``<o>/gain-reference.mrc``, float32 MRC, pixel size 1.0 A
    as RELION writes it), unless it is there already; True if written. ``directory``: ``--o``
    as the run checked it: one replaced since (by a symbolic link, say) gets nothing.

    A ``gain-reference.mrc`` that exists is never replaced: TIFFs of gain-normalised movies are
    only right together with it (TIFF x gain reference = the movie), and the TIFFs converted
    into the same ``--o`` by an earlier run may be those. One that holds this very image (bit for
    bit) is kept, not rewritten (False); any other (another gain, another ``--thresh``, a file
    that cannot be read) is an :class:`~cryotiff.errors.ExistingOutputError`, before anything
    is converted. The file appears complete or not at all, and never replaces one that another
    run wrote meanwhile (it is linked into place, which fails where a file exists).

    Args:
        made_from: what ``reference`` comes from, for the message (``--gain g.bin`` ...).
        gain_path: the gain file given (``--gain``): refused if it is ``path`` itself.
        dependents: called only for the refusal: a sentence naming outputs that need the
            existing file ("" if none is known).

    Raises:
        ExistingOutputError: ``path`` holds something else, or is the ``--gain`` file.
        OutputError: it cannot be written.
    """
    path = Path(path)
    if directory is not None:
        try:
            dir_fd = directory.open()
        except OutputError as exc:
            raise OutputError(f"{path}: not written: {exc}") from None
    else:
        dir_fd = open_directory(path.parent)
    # One descriptor of the directory serves the look at the name, the comparison with what is
    # there and the writing: a directory replaced meanwhile is neither read nor written.
    try:
        if gain_path is not None and _is_gain_file(path, dir_fd, gain_path):
            raise ExistingOutputError(f"{path}: is the --gain file itself, which this run would write over; give "
                                      "another --o (or rename the gain file)")
        reference = np.ascontiguousarray(reference, dtype=np.float32)
        if _name_taken(path, dir_fd):
            refuse_another_gain_reference(path, reference, made_from=made_from, dependents=dependents, dir_fd=dir_fd)
            return False
        target = _write_mrc_temporary(path, reference, voxel_size_angstrom=1.0, fsync=True, directory=dir_fd)
        try:
            if target.commit_unless_exists():
                fsync_directory(path.parent, dir_fd)  # its name on the disk before any TIFF that needs it
                return True
        finally:
            target.discard()
        # another run wrote one meanwhile
        refuse_another_gain_reference(path, reference, made_from=made_from, dependents=dependents, dir_fd=dir_fd)
        return False
    finally:
        os.close(dir_fd)


def _name_taken(path: Path, dir_fd: int) -> bool:
    """Something (a file, a link, even a dangling one) has ``path``'s name in ``dir_fd``."""
    try:
        os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # there, but cannot be looked at: compared (and refused) as before
    return True


def _is_gain_file(path: Path, dir_fd: int, gain_path: str | os.PathLike[str]) -> bool:
    """``path``'s name in ``dir_fd`` leads to the ``--gain`` file itself."""
    try:
        here, gain = os.stat(path.name, dir_fd=dir_fd), os.stat(gain_path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (gain.st_dev, gain.st_ino)


def refuse_another_gain_reference(path: str | os.PathLike[str], reference: np.ndarray, *, made_from: str,
                                  dependents: Callable[[], str] | None = None, dir_fd: int | None = None) -> None:
    """Nothing if ``path`` does not exist or holds ``reference`` bit for bit; otherwise the
    refusal of :func:`keep_or_write_gain_reference` (``--dry_run`` asks this without writing).
    ``dir_fd``: a descriptor of ``path``'s directory as the run checked it, in which its name is
    looked up and read (else the name as it leads now).

    Raises:
        ExistingOutputError: ``path`` holds another image, or cannot be read.
    """
    path = Path(path)
    if not (os.path.lexists(path) if dir_fd is None else _name_taken(path, dir_fd)):
        return
    try:
        existing = read_mrc_image(path, "gain reference", dir_fd=dir_fd)
        problem = f"holds another gain reference than the one {made_from} gives"
    except GainError as exc:
        existing = None
        problem = f"cannot be compared with the gain reference {made_from} gives ({exc})"
    if existing is not None and _same_image(existing, reference):
        return
    needed_by = dependents() if dependents is not None else ""
    raise ExistingOutputError(
        f"{path} exists and {problem}. It is not replaced: it may be the gain reference of TIFFs converted into "
        f"{path.parent} earlier, which are right only with the gain reference they were made with{needed_by}. "
        f"Give another --o, or remove {path} yourself once nothing needs it, and run again."
    )


def write_float_mrc(
    path: str | os.PathLike[str],
    array: np.ndarray,
    pixel_size_angstrom: float | None = None,
    *,
    fsync: bool = True,
) -> Path:
    """Atomically write a 2-D float32 MRC (mode 2, nz = 1), e.g. ``<o>/gain-reference.mrc``.

    cella = (nx, ny, 1) x pixel size (1.0 A when None, as RELION); amin/amax/amean/rms are
    computed from the data (RELION copies stale ones; this file's are correct).
    """
    data = np.asarray(array, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"write_float_mrc() needs a 2-D array, not shape {data.shape}")
    path = Path(path)
    _atomic_write_mrc(path, data, voxel_size_angstrom=1.0 if pixel_size_angstrom is None else float(pixel_size_angstrom), fsync=fsync)
    return path




# ---------------------------------------------------------------------------------------------
# Every kind of --gain file (EER gains, --check_gain), as RELION has it in memory
# ---------------------------------------------------------------------------------------------

MRC_EXTENSIONS = ("mrc", "mrcs")
TIFF_EXTENSIONS = ("tif", "tiff")


def file_extension(path: str | os.PathLike[str]) -> str:
    """The text after the last dot of the file name (not of a directory name), "" if none; as
    given (RELION's tests of it are case-sensitive)."""
    name = os.path.basename(os.fspath(path))
    return name.rsplit(".", 1)[1] if "." in name else ""


def is_multiplicative_gain_path(path: str | os.PathLike[str]) -> bool:
    """True for an extension of exactly ``gain`` (RELION's test; case-sensitive)."""
    return file_extension(path) == "gain"


def read_gain_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, bool]:
    """``(gain as float32 (ny, nx), multiplicative)`` of a gain file, oriented as RELION has it in
    memory (RELION reads gains as float too): a ``.gain`` file (TFS, a multiplicative TIFF) first
    page in its own row order; a ``.tif``/``.tiff`` first page with RELION's TIFF reader flip
    (memory row 0 = the file's last row); an MRC's (``.mrc``/``.mrcs``) first image as stored.
    ``multiplicative`` is True for ``.gain`` only (the rules of :mod:`cryotiff.eer_gain`).
    Unreadable files raise GainError naming the file."""
    ext = file_extension(path)
    multiplicative = ext == "gain"
    check_regular_file(path, "a gain file", GainError)  # before opening: a named pipe would block
    if multiplicative or ext in TIFF_EXTENSIONS:
        data = _read_tiff_first_page(path)
        if not multiplicative:
            data = data[::-1]  # RELION's TIFF reader flips rows; only .gain is flipped back
    elif ext in MRC_EXTENSIONS:
        data = _read_mrc_first_image(path)
    else:
        raise GainError(
            f"{path}: unsupported EER gain file type {('.' + ext) if ext else '(no extension)'}; "
            "use a .gain file (multiplicative TIFF), an MRC file or a TIFF file."
        )
    if data.ndim != 2 or data.size == 0:
        raise GainError(f"{path}: the gain is not a single 2D image (shape {data.shape}).")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise GainError(f"{path}: unsupported sample type {data.dtype} for a gain.")
    gain = np.ascontiguousarray(data, dtype=np.float32)
    check_gain_values(gain, path)
    return gain, multiplicative


def check_gain_values(gain: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Refuse an EER gain that holds NaN, infinite or negative values, or only zeros, naming how
    many pixels are bad. 0 is a defect (kept as 0, as RELION does); the other values have no
    meaning as a sensitivity or a gain, and RELION would turn them into NaN or negative gains in
    ``gain-reference.mrc``."""
    with np.errstate(invalid="ignore"):
        n_nan = int(np.count_nonzero(np.isnan(gain)))
        n_inf = int(np.count_nonzero(np.isinf(gain)))
        n_negative = int(np.count_nonzero(gain < 0))
    bad = [f"{n} {what}" for n, what in ((n_nan, "NaN"), (n_inf, "infinite"), (n_negative, "negative")) if n]
    if bad:
        raise GainError(
            f"{path}: {n_nan + n_inf + n_negative} of the {gain.size} pixels of the gain are not usable "
            f"values ({', '.join(bad)}); only positive values and 0 (a defect) are. The gain file is damaged."
        )
    if not gain.any():
        raise GainError(f"{path}: the gain is zero everywhere (every pixel a defect); it is not a gain reference.")


def _read_tiff_first_page(path: str | os.PathLike[str]) -> np.ndarray:
    import tifffile  # only TIFF gains need it (an --estimate_gain run imports none)

    try:
        # Opened so that a named pipe put at the name after the check cannot block the open.
        with open_regular_stream(path, "a gain file", GainError) as handle, tifffile.TiffFile(handle) as tif:
            if not tif.pages:
                raise GainError(f"{path}: the TIFF file has no image.")
            return np.asarray(tif.pages[0].asarray())
    except CryotiffError:
        raise
    except FileNotFoundError:
        raise GainError(f"{path}: gain file not found.") from None
    except Exception as exc:  # tifffile / imagecodecs / OS errors: a damaged or foreign file
        raise GainError(
            f"{path}: cannot read the gain as TIFF ({type(exc).__name__}: {exc})."
        ) from None


def _read_mrc_first_image(path: str | os.PathLike[str]) -> np.ndarray:
    """The first image of an MRC gain (RELION reads the first of a stack), with cryotiff's MRC
    reader, which is lenient like RELION's (the same reader as :func:`read_mrc_image`)."""
    try:
        with open_mrc(Path(path)) as mrc:
            return mrc.read_frame(0)
    except FileNotFoundError:
        raise GainError(f"{path}: gain file not found.") from None
    except (CryotiffError, OSError, ValueError) as exc:
        raise GainError(f"{path}: cannot read the gain as MRC: {exc}") from None
