"""``<o>/cryotiff-manifest.jsonl``: what every output of an output directory must contain, so
that it can be checked after the originals are gone (``--verify_only``).

At conversion, one line of JSON is appended per TIFF written, under a lock (``flock`` on the
manifest itself), so that runs into the same ``--o``, one after the other or at the same time
(MPI ranks, a ``--watch`` beside a rerun), all keep their entries. A later line for
the same output replaces an earlier one when the manifest is read. A line holds:

* ``output``: the TIFF's path relative to ``--o``; ``output_bytes`` and ``output_sha256``: its
  size and the SHA-256 of its bytes (``sha256sum`` gives the same), read through the descriptor
  that wrote it (:class:`cryotiff.io.atomic.WrittenFile`), never its name: begun while the file
  is synced, before its rename, and used where the file still has the size and modification
  time it had then (else read again);
* ``pages``, ``shape_yx`` (rows, columns), ``sample_type``, and the pixels: ``page_sha256``, the
  first 16 hexadecimal digits of the SHA-256 of each page's samples (raster order, row 0 of the
  movie first, little-endian), and ``pixels_sha256``, the SHA-256 of the full page digests one
  after the other, so that a page that decodes differently is found and named without the
  original;
* ``source``: the movie as named in the input, ``source_bytes`` and ``source_sha256``;
* ``record``: what made it, as recorded in the TIFF's own ImageDescription
  (:class:`cryotiff.recorded_options.OutputRecord`: the options that change its pixels, the
  codec, whether every strip was verified, the version);
* ``gain_reference``: for a float (gain-normalised) movie converted with ``--gain``, whose
  integer pages give back its data only times ``<o>/gain-reference.mrc``, and for an EER movie
  converted with ``--gain``, whose counts need the EER gain converted into that file (as
  RELION's ``src/tiff_converter.cpp`` writes it): ``{"file": "gain-reference.mrc",
  "pixels_sha256": ...}``, the file's name relative to ``--o`` and the SHA-256 of its float32
  samples (as :func:`page_digest` makes it, all 64 digits); ``null`` for every other output. A line written before this field existed lacks it, and is read as
  ``null``: the check of a gain-normalised output then cannot tell which gain reference its
  pages need (:func:`cryotiff.verify.verify_with_manifest` calls it unchecked);
* ``left_out_raw_frames``: for an EER movie, the damaged raw frames (1-based) its pages leave
  out, ``[]`` when none; ``null`` for other movies. A line written before this field existed
  lacks it: ``--only_do_unfinished`` then cannot tell whether the output lacks frames and
  converts the movie again (:func:`cryotiff.jobs.check_finished`);
* ``written``: local time, ISO 8601.

The manifest is written by :meth:`Manifest.add_later` (called by
:func:`cryotiff.convert.convert_movie` when the run's context carries a manifest; the run waits
for it with :meth:`Manifest.wait` at its end) and read by :func:`read_manifest`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import stat
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import CryotiffError, OutputError
from .io.atomic import LOCKS_UNSUPPORTED_ERRNOS, fsync_directory

MANIFEST_NAME = "cryotiff-manifest.jsonl"
#: Layout version of a line; lines of another version are ignored by this version.
MANIFEST_FORMAT = 1
#: How long to wait for another run that holds the lock.
LOCK_TIMEOUT_SECONDS = 300.0
#: Hexadecimal digits kept per page digest (64 bits: a changed page is never missed by chance).
PAGE_DIGEST_DIGITS = 16


def page_digest(page: np.ndarray) -> bytes:
    """SHA-256 of a page's samples in raster order, little-endian (see the module docstring)."""
    samples = np.ascontiguousarray(page, dtype=page.dtype.newbyteorder("<"))
    return hashlib.sha256(samples.view(np.uint8)).digest()


def pixels_digest(page_digests: Sequence[bytes]) -> str:
    """``pixels_sha256``: the SHA-256 of the pages' full digests, in page order."""
    return hashlib.sha256(b"".join(page_digests)).hexdigest()


@dataclass(frozen=True)
class ManifestEntry:
    """One output as the manifest describes it (see the module docstring for the fields)."""

    output: str
    output_bytes: int
    output_sha256: str
    pages: int
    shape_yx: tuple[int, int]
    sample_type: str
    page_sha256: tuple[str, ...]
    pixels_sha256: str
    source: str
    source_bytes: int
    source_sha256: str
    record: dict[str, Any]
    written: str
    gain_reference: dict[str, str] | None = None
    left_out_raw_frames: tuple[int, ...] | None = None

    @property
    def needs_gain_reference(self) -> bool:
        """Whether its pages were made with ``--gain`` from a float movie (the record says so),
        so that they give back their original only times the gain reference."""
        return isinstance(self.record.get("made_with", {}).get("gain"), dict)

    def to_line(self) -> str:
        return json.dumps({"cryotiff_manifest": MANIFEST_FORMAT, "output": self.output,
                           "output_bytes": self.output_bytes, "output_sha256": self.output_sha256,
                           "pages": self.pages, "shape_yx": list(self.shape_yx), "sample_type": self.sample_type,
                           "page_sha256": list(self.page_sha256), "pixels_sha256": self.pixels_sha256,
                           "source": self.source, "source_bytes": self.source_bytes,
                           "source_sha256": self.source_sha256, "record": self.record, "written": self.written,
                           "gain_reference": self.gain_reference,
                           "left_out_raw_frames": (None if self.left_out_raw_frames is None
                                                   else list(self.left_out_raw_frames))},
                          ensure_ascii=True, separators=(",", ":"))

    @classmethod
    def from_line(cls, line: str) -> ManifestEntry | None:
        """The entry of one line, or None (another format version, or damaged: also a line
        whose page digests are not one per page)."""
        try:
            data = json.loads(line)
            if not isinstance(data, dict) or data.get("cryotiff_manifest") != MANIFEST_FORMAT:
                return None
            ny, nx = data["shape_yx"]
            if len(data["page_sha256"]) != int(data["pages"]):  # damaged or edited: one digest per page
                return None
            return cls(
                output=str(data["output"]), output_bytes=int(data["output_bytes"]),
                output_sha256=str(data["output_sha256"]), pages=int(data["pages"]), shape_yx=(int(ny), int(nx)),
                sample_type=str(data["sample_type"]), page_sha256=tuple(str(d) for d in data["page_sha256"]),
                pixels_sha256=str(data["pixels_sha256"]), source=str(data["source"]),
                source_bytes=int(data["source_bytes"]), source_sha256=str(data["source_sha256"]),
                record=dict(data.get("record") or {}), written=str(data.get("written", "")),
                gain_reference=_gain_reference_field(data.get("gain_reference")),
                left_out_raw_frames=_frame_numbers(data.get("left_out_raw_frames")),
            )
        except (ValueError, KeyError, TypeError):
            return None


def _gain_reference_field(value: Any) -> dict[str, str] | None:
    """``gain_reference`` of a line as read: None when absent (an earlier version's line) or not
    what this version writes."""
    if isinstance(value, dict) and all(isinstance(value.get(key), str) for key in ("file", "pixels_sha256")):
        return {"file": value["file"], "pixels_sha256": value["pixels_sha256"]}
    return None


def _frame_numbers(value: Any) -> tuple[int, ...] | None:
    """``left_out_raw_frames`` of a line as read: None when absent or not a list of frame numbers."""
    if isinstance(value, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in value):
        return tuple(value)
    return None


def gain_reference_digest(reference: np.ndarray) -> str:
    """``gain_reference.pixels_sha256``: the SHA-256 of a gain reference's float32 samples."""
    return page_digest(np.ascontiguousarray(reference, np.float32)).hex()


def _append_locked(path: Path, line: str) -> None:
    """Append ``line`` to ``path`` holding an exclusive ``flock`` on the file itself, so that
    runs writing at the same time never mix or lose lines. A file system without locks: written
    anyway, with one ``write`` of the whole line in append mode, which local file systems keep
    whole.

    A crash can leave the last line cut short (a power cut before the data reached the disk,
    a write stopped by a full disk in another run): the line then starts on a line of its own,
    so that the cut one spoils only itself. A write of this line that stops part-way is taken
    back (the file cut to its size before it), and the line goes to the disk (``fsync``; the
    directory too when the file is new) before this returns.

    Raises:
        OutputError: the file cannot be opened, locked or written.
    """
    from .io import special_file_kind

    try:  # O_NONBLOCK: a named pipe at the name must not block the open (it is refused below); O_RDWR: the
        # last byte is read (a line cut short before this one)
        descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                             | os.O_NONBLOCK | os.O_NOCTTY, 0o666)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a named pipe that no one reads, or a socket
            with contextlib.suppress(OSError):
                mode = os.lstat(path).st_mode
                raise OutputError(f"{path}: is {special_file_kind(mode)}, not a regular file; the manifest must be "
                                  "a regular file") from None
        raise OutputError(f"{path}: cannot add to the manifest ({exc.strerror or exc})") from None
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise OutputError(f"{path}: is {special_file_kind(mode)}, not a regular file; the manifest must be a "
                              "regular file")
        fcntl.fcntl(descriptor, fcntl.F_SETFL, fcntl.fcntl(descriptor, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
        locked = True
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OutputError(f"{path}: another run has held its lock for {LOCK_TIMEOUT_SECONDS:.0f} s; "
                                      "the entry was not added") from None
                time.sleep(0.02)
            except OSError as exc:
                if exc.errno in LOCKS_UNSUPPORTED_ERRNOS:
                    locked = False
                    break
                raise OutputError(f"{path}: cannot lock ({exc.strerror or exc})") from None
        data = line.encode("ascii")
        size_before = 0
        try:
            size_before = os.fstat(descriptor).st_size
            if size_before and os.pread(descriptor, 1, size_before - 1) != b"\n":
                data = b"\n" + data  # after a line cut short
            written = os.write(descriptor, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, "the entry was written only in part (a full disk?)")
            os.fsync(descriptor)
        except OSError as exc:
            if locked:  # nothing of the line stays (without the lock, another run may have appended since)
                with contextlib.suppress(OSError):
                    os.ftruncate(descriptor, size_before)
            raise OutputError(f"{path}: cannot add to the manifest ({exc.strerror or exc})") from None
        if size_before == 0:
            fsync_directory(path.parent)  # a new manifest's name too
    finally:
        os.close(descriptor)  # releases the lock


class Manifest:
    """The manifest of one output directory, for adding entries; thread-safe.

    Attributes:
        output_dir: ``--o``.
        path: ``<o>/cryotiff-manifest.jsonl``.
    """

    def __init__(self, output_dir: Path):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / MANIFEST_NAME
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        self._hasher = None  # one background thread, made on first use
        self._pending: list = []
        self._problems: list[str] = []
        self._unrecorded: list[Path] = []  # the outputs of those problems
        self._given: list[Path] = []  # the outputs given to add_later: in place, their lines written or warned of
        self._reference_digests: dict[int, tuple[np.ndarray, str]] = {}  # by id(), the array kept
        self._recorded = _ManifestReader(self.path)

    def hash_source_later(self, source: Path, held=None) -> Future:
        """Start hashing a movie's original in the background thread, as its conversion begins,
        so that reading and hashing it (about 0.7 s per GB) overlaps the conversion instead of
        following it; give the result to :meth:`add_later`. Its result is ``(size, sha256)``,
        or the error that reading the file gave. A movie that fails cancels it
        (``Future.cancel``) or lets it run out.

        ``held``: the :class:`cryotiff.io.HeldFile` of the movie converted (a duplicate of the
        descriptor its pages are read through). The hash reads that very file, through a
        duplicate of its descriptor with ``os.pread`` (no shared offset), never the name, which
        another file may have taken meanwhile; its size is the bytes hashed, and a file whose
        size or modification time changed while it was hashed gives an error, not a hash.
        Without it ``source`` is opened (:func:`cryotiff.io.open_regular_file`)."""
        from .errors import InputError
        from .io import open_regular_file

        held_descriptor = held.fileno() if held is not None else None
        try:
            descriptor = os.dup(held_descriptor) if held_descriptor is not None else open_regular_file(source)
        except (OSError, CryotiffError) as exc:
            failed: Future = Future()
            failed.set_result(exc)
            return failed
        opened = held.status_when_opened() if held is not None else None

        def hash_source() -> tuple[int, str] | Exception:
            from .io.digest import descriptor_sha256

            try:
                before = opened or os.fstat(descriptor)
                n_bytes, digest = descriptor_sha256(descriptor)
                after = os.fstat(descriptor)
            except OSError as exc:
                return exc
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or n_bytes != after.st_size:
                return InputError(f"{source}: the file changed while it was hashed for the manifest")
            return n_bytes, digest

        future = self._submit(hash_source, keep=False)
        future.add_done_callback(lambda _: os.close(descriptor))  # run, or cancelled before it ran
        return future

    def add_later(self, source: Path, destination: Path, page_digests: Sequence[bytes], shape_yx: tuple[int, int],
                  sample_type: str, source_hash: Future | None = None,
                  gain_reference: np.ndarray | None = None,
                  left_out_raw_frames: Sequence[int] | None = None, written=None) -> None:
        """Hash the files and add their entry in a background thread, so that reading and
        hashing the TIFF (and the original, unless ``source_hash`` from
        :meth:`hash_source_later` is given) overlaps the next movie; :meth:`wait` collects what
        could not be added. ``gain_reference``: the float32 image ``<o>/gain-reference.mrc``
        holds, which the pages need (a float movie converted with ``--gain``); digested once
        per run. ``left_out_raw_frames``: an EER movie's damaged raw frames (1-based) its pages
        leave out. ``written``: the :class:`cryotiff.io.atomic.WrittenFile` of the TIFF (closed
        here), through which it is hashed and its record read: the entry describes the file
        written, whatever file has taken its name since; without it the name is read."""

        def hash_and_add() -> None:
            try:
                # The one background thread takes its tasks in order: the source's hash, submitted
                # earlier, is done by now.
                hashed = source_hash.result() if source_hash is not None else None
                if isinstance(hashed, Exception):
                    raise hashed
                entry = self.entry_for(source, destination, page_digests, shape_yx, sample_type, hashed, written)
                if gain_reference is not None:
                    from .gain.files import GAIN_REFERENCE_NAME

                    entry = dataclasses.replace(entry, gain_reference={
                        "file": GAIN_REFERENCE_NAME, "pixels_sha256": self._reference_digest(gain_reference)})
                if left_out_raw_frames is not None:
                    entry = dataclasses.replace(entry, left_out_raw_frames=tuple(left_out_raw_frames))
                self.add(entry)
            except (CryotiffError, OSError) as exc:
                with self._lock:
                    self._problems.append(f"WARNING: {destination} is complete but not in the manifest: {exc}")
                    self._unrecorded.append(Path(destination))
            finally:
                if written is not None:
                    written.close()

        with self._lock:
            self._given.append(Path(destination))
        self._submit(hash_and_add, keep=True)

    def _reference_digest(self, reference: np.ndarray) -> str:
        """:func:`gain_reference_digest`, made once per reference (the one background thread
        calls it)."""
        known = self._reference_digests.get(id(reference))
        if known is None or known[0] is not reference:
            known = self._reference_digests[id(reference)] = (reference, gain_reference_digest(reference))
        return known[1]

    def _submit(self, task, keep: bool) -> Future:
        """Run ``task`` on the one background thread (made on first use); :meth:`wait` waits
        for the ``keep`` ones."""
        from concurrent.futures import ThreadPoolExecutor

        with self._lock:
            if self._hasher is None:
                self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cryotiff-manifest")
            future = self._hasher.submit(task)
            if keep:
                self._pending = [pending for pending in self._pending if not pending.done()]
                self._pending.append(future)
        return future

    def wait(self) -> list[str]:
        """Wait until every entry given to :meth:`add_later` is written; the warnings about
        those that could not be (each once). An entry leaves the list only once it is done, so
        that a wait cut short (KeyboardInterrupt) loses none: the next call waits for the rest."""
        while True:
            with self._lock:
                self._pending = [pending for pending in self._pending if not pending.done()]
                if not self._pending:
                    break
                first = self._pending[0]
            first.result()
        with self._lock:
            problems, self._problems = self._problems, []
        return problems

    def outputs_given(self) -> list[Path]:
        """The TIFFs given to :meth:`add_later` so far (each in place under its name): the
        outputs this run finished, also one whose result was lost as the run stopped."""
        with self._lock:
            return list(self._given)

    def unrecorded(self) -> list[Path]:
        """The outputs whose entries could not be added so far (those :meth:`wait` warned of)."""
        with self._lock:
            return list(self._unrecorded)

    def entry_for(self, source: Path, destination: Path, page_digests: Sequence[bytes], shape_yx: tuple[int, int],
                  sample_type: str, source_hash: tuple[int, str] | None = None, written=None) -> ManifestEntry:
        """Hash the written TIFF and its source (reading both files; the source's
        ``(size, sha256)`` may be given, hashed already) and describe them. ``written``: the
        :class:`cryotiff.io.atomic.WrittenFile` of the TIFF, read instead of its name.

        Raises:
            OutputError: the TIFF written changed after it was put in place (it is not
                described).
        """
        from .recorded_options import file_sha256, read_record

        source_bytes, source_sha256 = source_hash if source_hash is not None else (source.stat().st_size,
                                                                                    file_sha256(source))
        if written is not None:
            duplicate = os.dup(written.fileno())
            with open(os.fspath(destination), "rb", opener=lambda *_: duplicate) as handle:  # named, for tifffile
                handle.seek(0)  # the offset is the writer's (tifffile takes a handle's position as the start)
                record = read_record(handle)
            output_bytes, output_sha256 = written.sha256()
            if not written.unchanged() or output_bytes != written.status.st_size:
                raise OutputError(f"{destination}: the file changed after it was written (another program wrote "
                                  "into it); the manifest cannot describe it")
        else:
            record = read_record(destination)
            output_bytes, output_sha256 = destination.stat().st_size, file_sha256(destination)
        record_fields = json.loads(record.to_description()) if record is not None else {}
        record_fields.pop("cryotiff_record", None)
        return ManifestEntry(
            output=os.path.relpath(destination, self.output_dir),
            output_bytes=output_bytes,
            output_sha256=output_sha256,
            pages=len(page_digests),
            shape_yx=(int(shape_yx[0]), int(shape_yx[1])),
            sample_type=sample_type,
            page_sha256=tuple(digest.hex()[:PAGE_DIGEST_DIGITS] for digest in page_digests),
            pixels_sha256=pixels_digest(page_digests),
            source=str(source),
            source_bytes=source_bytes,
            source_sha256=source_sha256,
            record=record_fields,
            written=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )

    def recorded(self, destination: Path) -> ManifestEntry | None:
        """The manifest's entry for the output ``destination`` now (the last line for it), or
        None; the file is read once, then only the lines added since. Thread-safe.

        Raises:
            OutputError: the manifest exists but cannot be read.
        """
        return self._recorded.entry(os.path.relpath(destination, self.output_dir))

    def add(self, entry: ManifestEntry) -> None:
        """Append ``entry`` under the lock (at once; :meth:`add_later` hashes in the background).

        Raises:
            OutputError: the manifest cannot be written.
        """
        with self._writing:
            _append_locked(self.path, entry.to_line() + "\n")


class _ManifestReader:
    """The entries of a manifest by output path, kept current: lines are only ever appended, so
    after the first reading only the lines added since are read (the whole file again if it
    was replaced or shortened)."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, ManifestEntry] = {}
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file read
        self._offset = 0  # bytes read, up to the end of the last whole line

    def entry(self, output: str) -> ManifestEntry | None:
        with self._lock:
            self._catch_up()
            return self._entries.get(output)

    def _catch_up(self) -> None:
        try:
            with _open_manifest(self.path) as handle:
                status = os.fstat(handle.fileno())
                identity = (status.st_dev, status.st_ino)
                if identity != self._identity or status.st_size < self._offset:
                    self._entries, self._identity, self._offset = {}, identity, 0
                if status.st_size == self._offset:
                    return
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            self._entries, self._identity, self._offset = {}, None, 0
            return
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot read the manifest ({exc.strerror or exc})") from None
        whole = data[:data.rfind(b"\n") + 1]  # a line being appended is read once it is whole
        self._offset += len(whole)
        for line in whole.decode("ascii", errors="replace").splitlines():
            entry = ManifestEntry.from_line(line)
            if entry is not None:
                self._entries[entry.output] = entry


def _open_manifest(path: Path):
    """The manifest opened to read it, binary (:func:`cryotiff.io.open_regular_stream`: a named
    pipe at its name never blocks the run).

    Raises:
        FileNotFoundError: there is none.
        OSError: it cannot be opened.
        OutputError: its name leads to no regular file.
    """
    from .io import open_to_read, special_file_kind

    descriptor, status = open_to_read(path)
    if not stat.S_ISREG(status.st_mode):
        os.close(descriptor)
        raise OutputError(f"{path}: is {special_file_kind(status.st_mode)}, not a regular file; the manifest "
                          "must be a regular file.")
    return open(os.fspath(path), "rb", opener=lambda *_: descriptor)


def read_manifest(output_dir: Path) -> dict[str, ManifestEntry]:
    """The entries of ``<o>/cryotiff-manifest.jsonl`` by output path (relative to ``output_dir``),
    the last line for an output winning; ``{}`` when there is no manifest.

    Raises:
        OutputError: the manifest exists but cannot be read.
    """
    path = Path(output_dir) / MANIFEST_NAME
    entries: dict[str, ManifestEntry] = {}
    try:
        with _open_manifest(path) as handle:
            for line in handle:
                entry = ManifestEntry.from_line(line.decode("ascii", errors="replace"))
                if entry is not None:
                    entries[entry.output] = entry
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise OutputError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
    return entries
