"""Every file cryotiff writes is written here: atomically, never through a link, with the
permissions a plain ``open()`` gives.

A file ``X`` is written as a fresh temporary file ``X.cryotiff-<pid>-<8 hex digits>.tmp`` in the
same directory (for a movie: ``Movies/a.tif.cryotiff-4711-9f3ab2c1.tmp``) and renamed to ``X``
only once it is complete:

* The temporary file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW``: it never follows a link
  and never reuses a file that exists (a name that is taken is skipped for another random one).
  Its mode is 0666 less the umask, as ``open()`` gives (``tempfile.mkstemp`` would give 0600).
* The writer holds an exclusive ``flock`` on it until it is renamed or removed, and once it has
  the lock checks that the name still leads to the file (else it was removed as stale between
  its creation and the lock: it takes another name). A temporary file whose lock can be taken
  therefore belongs to no live process, also an empty one: :func:`remove_if_stale` removes
  such files (left by ``kill -9``, a crash or a power cut) at once, and never one that is being
  written, also not by another run writing into the same directory at the same time. On a file
  system without locks (:data:`LOCKS_UNSUPPORTED_ERRNOS`: Lustre without ``-o flock``, say) the
  file is written unlocked, and no temporary file is ever taken for stale there: leftovers stay.
* ``os.replace`` puts it in place: it replaces whatever entry ``X`` is, a file or a symlink, and
  never writes through a link at ``X``. Just before, the name is checked to still be the file
  that was written.
* Everything happens relative to one descriptor of ``X``'s directory, opened when the writing
  begins (``os.open(..., dir_fd=)``, ``os.replace(src_dir_fd=, dst_dir_fd=)``,
  ``os.unlink(dir_fd=)``): the temporary file, the check, the rename and a removal all land in
  that directory, even if a directory on its path is replaced (by a symlink, say) meanwhile. A
  :class:`CheckedDirectory` (a movie's directory under ``--o``, as the run checked it) is opened
  component by component (``O_DIRECTORY | O_NOFOLLOW``; a component that was a symbolic link
  when checked is followed, to the directory it led to then) and each directory compared with
  the one checked (``st_dev``, ``st_ino``): one replaced since fails the write with a message,
  before anything is written. A
  directory of the destination replaced during the writing fails it after the rename, saying
  where the file went.

RELION writes ``X.tif.tmp``; a file of that name carries no lock, so cryotiff cannot tell
whether a RELION run is writing it and never touches it.

This module imports nothing from the rest of cryotiff except :mod:`cryotiff.errors` and
:mod:`cryotiff.io.digest`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import OutputError
from .digest import BackgroundDigest, DigestStopped, descriptor_sha256

#: What marks cryotiff's temporary files: ``<name>.cryotiff-<token>.tmp``.
TEMPORARY_MARK = ".cryotiff-"
TEMPORARY_SUFFIX = ".tmp"
_TOKEN_PATTERN = r"[0-9]+-[0-9a-f]{8}"

#: Attempts at a fresh name before giving up (a clash needs the same pid and 32 random bits).
_NAME_ATTEMPTS = 100

#: What ``flock`` fails with where the file system has no locks: Lustre mounted without
#: ``-o flock`` (its default: ENOSYS), NFS without its lock service (ENOLCK), some FUSE and SMB
#: mounts (EOPNOTSUPP, EINVAL).
LOCKS_UNSUPPORTED_ERRNOS = frozenset({errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL})


def lock_if_supported(fd: int, operation: int) -> bool:
    """``fcntl.flock(fd, operation)``; False where the file system has no locks
    (:data:`LOCKS_UNSUPPORTED_ERRNOS`), True once it is taken.

    Raises:
        BlockingIOError: with ``LOCK_NB``, another holds the lock.
        OSError: any other failure.
    """
    try:
        fcntl.flock(fd, operation)
    except OSError as exc:
        if exc.errno in LOCKS_UNSUPPORTED_ERRNOS and not isinstance(exc, BlockingIOError):
            return False
        raise
    return True


def _random_token() -> str:
    # os.urandom rather than the secrets module, whose import (hmac, random) costs about 8 ms of
    # every run's start.
    return f"{os.getpid()}-{os.urandom(4).hex()}"


def temporary_name(name: str, token: str | None = None) -> str:
    """The name of a temporary file for the file ``name``: ``<name>.cryotiff-<pid>-<hex>.tmp``."""
    return f"{name}{TEMPORARY_MARK}{token or _random_token()}{TEMPORARY_SUFFIX}"


def temporaries_of(destination: Path, names: list[str] | None = None) -> list[Path]:
    """cryotiff's temporary files of ``destination`` (any process's) in its directory, sorted.

    ``names``: the directory's entries, if already listed (saves listing it again).
    """
    destination = Path(destination)
    if names is None:
        try:
            names = os.listdir(destination.parent if str(destination.parent) else ".")
        except OSError:
            return []
    pattern = re.compile(re.escape(destination.name) + re.escape(TEMPORARY_MARK) + _TOKEN_PATTERN
                         + re.escape(TEMPORARY_SUFFIX))
    return sorted(destination.parent / name for name in names if pattern.fullmatch(name))


def destination_of_temporary(name: str) -> str | None:
    """``a.tif.cryotiff-4711-9f3ab2c1.tmp`` -> ``a.tif``; None for any other name."""
    match = re.fullmatch(r"(.+)" + re.escape(TEMPORARY_MARK) + _TOKEN_PATTERN + re.escape(TEMPORARY_SUFFIX), name)
    return match.group(1) if match else None


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


_DIRECTORY_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


def _identity(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


class CheckedDirectory:
    """The directory a movie's TIFF goes into, ``--o`` or one under it, as the run checked it:
    the identity (``st_dev``, ``st_ino``) of ``--o`` and of each directory on the way down,
    recorded when it is made. :meth:`open` opens it again, component by component, and refuses
    a directory that is no longer the one checked, so that a directory replaced by a link (or
    another directory) after the check is never written into.

    ``--o`` itself is followed where it is a symbolic link given by the user (``root_identity``:
    what it led to when the run began, which it must still lead to). A directory below it that
    is a symbolic link when it is checked is followed too, as the docs promise (an output tree
    spread over several disks), but only to the directory it led to then.

    Raises:
        OutputError: a directory on the way cannot be looked at, or ``--o`` no longer leads to
            ``root_identity``.
    """

    def __init__(self, root: str | os.PathLike[str], directory: str | os.PathLike[str],
                 root_identity: tuple[int, int] | None = None):
        self.root = Path(root)
        self.directory = Path(directory)
        try:
            self.parts = self.directory.relative_to(self.root).parts
        except ValueError:  # not under --o: checked as one directory, whatever --o is
            self.root, self.parts, root_identity = self.directory, (), None
        self.identities: list[tuple[int, int]] = []
        where = self.root
        for part in (None, *self.parts):
            where = where if part is None else where / part
            try:
                self.identities.append(_identity(os.stat(where)))
            except OSError as exc:
                raise OutputError(f"{where}: cannot write into it ({exc.strerror or exc})") from None
        if root_identity is not None and self.identities[0] != tuple(root_identity):
            raise OutputError(self._replaced(self.root))

    def _replaced(self, where: Path) -> str:
        return (f"{where}: the output directory was replaced (by a symbolic link or another directory) since the "
                "run checked it; nothing is written there")

    def open(self) -> int:
        """A descriptor of the directory checked (the caller closes it).

        Raises:
            OutputError: a directory on the way is not the one checked any more, or cannot be
                opened.
        """
        where = self.root
        try:
            fd = os.open(where, _DIRECTORY_FLAGS)
        except OSError as exc:
            raise OutputError(f"{where}: cannot write into it ({exc.strerror or exc})") from None
        try:
            self._check(fd, 0, where)
            for index, part in enumerate(self.parts, start=1):
                where = where / part
                try:
                    child = os.open(part, _DIRECTORY_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise OutputError(f"{where}: cannot write into it ({exc.strerror or exc})") from None
                    # A symbolic link: followed only to the directory it led to when checked.
                    try:
                        child = os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)
                    except OSError:
                        raise OutputError(self._replaced(where)) from None
                os.close(fd)
                fd = child
                self._check(fd, index, where)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check(self, fd: int, index: int, where: Path) -> None:
        if _identity(os.fstat(fd)) != self.identities[index]:
            raise OutputError(self._replaced(where))


def open_directory(directory: Path) -> int:
    """A descriptor of ``directory`` (symbolic links followed), for files written there without
    a :class:`CheckedDirectory` (the caller closes it).

    Raises:
        OutputError: it cannot be opened.
    """
    try:
        return os.open(directory if str(directory) else ".", _DIRECTORY_FLAGS)
    except OSError as exc:
        raise OutputError(f"{directory}: cannot write into it ({exc.strerror or exc})") from None


class WrittenFile:
    """A descriptor of a file as it was written, kept after its rename into place, so that what
    describes the file (the manifest's hash) reads the file written, not whatever file its name
    leads to by then. Read it with ``os.pread``; :meth:`close` it.

    Attributes:
        status: its ``os.fstat`` when it was put in place (size, modification time).
    """

    def __init__(self, descriptor: int, digest: BackgroundDigest | None = None):
        self._descriptor: int | None = descriptor
        self._digest = digest
        self.status = os.fstat(descriptor)

    def fileno(self) -> int:
        if self._descriptor is None:
            raise ValueError("the written file was closed")
        return self._descriptor

    def unchanged(self) -> bool:
        """The file's size and modification time are still those it was written with."""
        now = os.fstat(self.fileno())
        return (now.st_size, now.st_mtime_ns) == (self.status.st_size, self.status.st_mtime_ns)

    def sha256(self) -> tuple[int, str]:
        """``(bytes, SHA-256 in hexadecimal)`` of the file: the digest begun before its
        ``fsync`` (:meth:`AtomicFile.commit`) where the file had then the size and modification
        time it was put in place with, else read now. Compare :meth:`unchanged` afterwards.

        Raises:
            OSError: reading it failed.
        """
        begun, self._digest = self._digest, None
        if begun is not None:
            before = begun.status_before
            try:
                n_bytes, digest = begun.result()
            except DigestStopped:
                pass
            else:
                if (before.st_size, before.st_mtime_ns) == (self.status.st_size, self.status.st_mtime_ns) \
                        and n_bytes == before.st_size:
                    return n_bytes, digest
        return descriptor_sha256(self.fileno())

    def close(self) -> None:
        """Idempotent."""
        begun, self._digest = self._digest, None
        if begun is not None:
            begun.stop()
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is not None:
            os.close(descriptor)


class AtomicFile:
    """A file being written atomically (see the module docstring), in the directory opened when
    it is created: that of ``directory`` (a :class:`CheckedDirectory`, which must be
    ``destination``'s directory, or a descriptor of that directory already open, which is
    duplicated: the caller keeps and closes its own), else ``destination``'s directory as its
    path leads now.

    Attributes:
        destination: the file it becomes.
        path: the temporary file (as a path, for messages: it is reached through the directory
            descriptor).
        handle: binary, readable and writable, positioned at 0; its ``name`` is ``path``.
    """

    def __init__(self, destination: str | os.PathLike[str], directory: CheckedDirectory | int | None = None):
        self.destination = Path(destination)
        self._done = False
        if isinstance(directory, int):
            self._dir_fd = os.dup(directory)
        elif directory is not None:
            self._dir_fd = directory.open()
        else:
            self._dir_fd = open_directory(self.destination.parent)
        self._directory_status = os.fstat(self._dir_fd)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            for _ in range(_NAME_ATTEMPTS):
                name = temporary_name(self.destination.name)
                try:
                    fd = os.open(name, flags, 0o666, dir_fd=self._dir_fd)  # 0666 & ~umask, as open() gives
                except FileExistsError:
                    continue  # taken (or a link planted there): another name
                except OSError as exc:
                    raise OutputError(f"{self.destination}: cannot write ({exc.strerror or exc})") from None
                try:
                    # Blocks only while a stale check holds its shared lock. Without locks (the
                    # file system has none) no stale check removes a temporary, so none is needed.
                    locked = lock_if_supported(fd, fcntl.LOCK_EX)
                    status = os.fstat(fd)
                except BaseException as exc:
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=self._dir_fd)
                    os.close(fd)
                    if isinstance(exc, OSError):
                        raise OutputError(f"{self.destination}: cannot lock its temporary file "
                                          f"({exc.strerror or exc})") from None
                    raise
                if self._names(name, status):
                    break
                # Removed before it was locked, by a stale check (an empty file whose lock is
                # free is stale to it, so that a crash's leftovers go at once): another name.
                os.close(fd)
            else:
                raise OutputError(f"{self.destination}: cannot write (no free temporary name in "
                                  f"{self.destination.parent})")
        except BaseException:
            self._close_directory()
            raise
        self._name = name
        self._locked = locked
        self.path = self.destination.with_name(name)
        self._stat = status
        try:
            self.handle: BinaryIO = open(str(self.path), "r+b", opener=lambda *_: fd)  # noqa: SIM115
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self._dir_fd)
            os.close(fd)
            self._close_directory()
            raise

    def _close_directory(self) -> None:
        fd, self._dir_fd = self._dir_fd, None
        if fd is not None:
            os.close(fd)

    def _names(self, name: str, status: os.stat_result) -> bool:
        """``name`` (in the directory opened) is the file of ``status``, which has a name."""
        try:
            return status.st_nlink > 0 and _same_file(os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False), status)
        except OSError:  # gone, or stale on NFS
            return False

    def still_ours(self) -> bool:
        """The temporary name still names the file being written (in the directory opened)."""
        try:
            return _same_file(os.stat(self._name, dir_fd=self._dir_fd, follow_symlinks=False), self._stat)
        except (OSError, TypeError):
            return False

    def _check_directory_after_rename(self) -> None:
        """The destination's directory, as its path leads now, is still the one written into;
        else the file went elsewhere than its name leads: say where."""
        try:
            same = _same_file(os.stat(self.destination.parent if str(self.destination.parent) else "."),
                              self._directory_status)
        except OSError:
            same = False
        if not same:
            raise OutputError(f"{self.destination}: its directory was replaced (by a symbolic link or another "
                              "directory) while the file was written; the file went into the directory that was "
                              f"there when the writing began, not where {self.destination.parent} leads now")

    def _ready_to_rename(self, fsync: bool, digest: bool = False) -> BackgroundDigest | None:
        """Flush (and ``fsync``) and check that the temporary name is still the file written;
        with ``digest``, the file's :class:`BackgroundDigest`, begun between the flush and the
        ``fsync`` so that it hashes while the disk writes."""
        begun = None
        try:
            self.handle.flush()
            if digest:
                begun = BackgroundDigest(self.handle.fileno())
            if fsync:
                os.fsync(self.handle.fileno())
        except BaseException as exc:
            if begun is not None:
                begun.stop()
            self.discard()
            if not isinstance(exc, OSError):
                raise
            raise OutputError(f"{self.destination}: cannot write ({exc.strerror or exc})") from None
        if not self.still_ours():
            self.discard()
            if begun is not None:
                begun.stop()
            raise OutputError(f"{self.destination}: its temporary file {self.path} was removed or replaced "
                              "while it was being written; not renamed")
        return begun

    def commit(self, fsync: bool = False, kept: list[WrittenFile] | None = None) -> None:
        """Flush (and ``fsync``), check the name and rename the file to its destination; with
        ``fsync`` the directory is synced after the rename too, so that after a power cut the
        name is there with the whole file, or not at all (without it, a file system may keep
        the rename and lose the data: a complete-looking file of zeros or holes). With ``kept``,
        a :class:`WrittenFile` of the file written (a duplicate of its descriptor, unlocked) is
        appended to it as soon as the file has its name, also when what follows fails or is
        interrupted (the file is in place then); the caller closes it.

        Raises:
            OutputError: the data or the rename cannot be written, or the temporary name was
                replaced meanwhile (then nothing is renamed).
        """
        # The file's digest (for its manifest line) runs beside the fsync rather than after it.
        begun = self._ready_to_rename(fsync, digest=kept is not None)
        try:
            written = WrittenFile(os.dup(self.handle.fileno()), begun) if kept is not None else None
        except BaseException:
            if begun is not None:
                begun.stop()
            self.discard()
            raise
        try:
            os.replace(self._name, self.destination.name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        except BaseException as exc:
            if written is not None:
                written.close()
            if not isinstance(exc, OSError):
                raise
            self.discard()
            raise OutputError(f"{self.destination}: cannot rename the finished file ({exc.strerror or exc})") from None
        if written is not None:
            kept.append(written)
        self._done = True
        if written is not None and self._locked:  # the duplicate shares the lock: released with it, after the rename
            fcntl.flock(written.fileno(), fcntl.LOCK_UN)
        self.handle.close()  # releases the lock, after the rename
        try:
            if fsync:
                fsync_directory(self.destination.parent, self._dir_fd)
            self._check_directory_after_rename()
        finally:
            self._close_directory()

    def commit_unless_exists(self, fsync: bool = False) -> bool:
        """:meth:`commit`, except that a file (or link) at the destination is never replaced:
        the file is hard-linked into place, which fails where one exists (False; the temporary
        file is removed). Where the file system has no hard links, a destination that does not
        exist is renamed into place as :meth:`commit` does.

        Raises:
            OutputError: as :meth:`commit`.
        """
        self._ready_to_rename(fsync)
        name, directory = self.destination.name, self._dir_fd
        try:
            os.link(self._name, name, src_dir_fd=directory, dst_dir_fd=directory, follow_symlinks=False)
        except FileExistsError:
            self.discard()
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV):
                self.discard()
                raise OutputError(f"{self.destination}: cannot write ({exc.strerror or exc})") from None
            try:  # no hard links here: the check, then the rename
                os.stat(name, dir_fd=directory, follow_symlinks=False)
                exists = True
            except FileNotFoundError:
                exists = False
            except OSError:
                exists = True
            if exists:
                self.discard()
                return False
            self.commit(fsync=fsync)
            return True
        written_into = os.dup(self._dir_fd)  # discard closes the directory's descriptor
        try:
            self.discard()  # the temporary name; the file stays under its destination
            if fsync:
                fsync_directory(self.destination.parent, written_into)
        finally:
            os.close(written_into)
        self._check_directory_after_rename()
        return True

    def discard(self) -> None:
        """Remove the temporary file (if it is still ours) and close it; idempotent."""
        if self._done:
            return
        self._done = True
        if self.still_ours():
            with contextlib.suppress(OSError):
                os.unlink(self._name, dir_fd=self._dir_fd)
        with contextlib.suppress(OSError):
            self.handle.close()
        self._close_directory()

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()


def fsync_directory(directory: str | os.PathLike[str], descriptor: int | None = None) -> None:
    """``fsync`` a directory, so that the names created or renamed in it survive a power cut.
    Where a directory cannot be opened or synced (some network file systems, which commit a
    rename before answering it), nothing is done. ``descriptor``: the directory already opened
    (the one a file was written into; not closed here), else ``directory`` is opened.

    Raises:
        OutputError: the file system reports that it could not write the directory (EIO).
    """
    directory = Path(directory)
    opened = descriptor
    if opened is None:
        try:
            opened = os.open(directory if str(directory) else ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
                             | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return
    try:
        os.fsync(opened)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EACCES):
            raise OutputError(f"{directory}: cannot write the directory to the disk ({exc.strerror or exc})") from None
    finally:
        if descriptor is None:
            os.close(opened)


@contextlib.contextmanager
def atomic_write(destination: str | os.PathLike[str], fsync: bool = False,
                 directory: CheckedDirectory | int | None = None) -> Iterator[BinaryIO]:
    """Write ``destination`` atomically: ``with atomic_write(path) as handle: handle.write(...)``.

    The file appears complete under its name when the block ends; on any error (including
    KeyboardInterrupt) nothing appears and the temporary file is removed. ``directory``: as
    for :class:`AtomicFile`.

    Raises:
        OutputError: the file cannot be created, written or renamed.
    """
    with AtomicFile(destination, directory) as target:
        try:
            yield target.handle
        except OSError as exc:
            raise OutputError(f"{target.destination}: cannot write ({exc.strerror or exc})") from None
        target.commit(fsync=fsync)


def write_bytes_atomically(destination: str | os.PathLike[str], data: bytes, fsync: bool = False,
                           directory: CheckedDirectory | int | None = None) -> None:
    """Write ``data`` as ``destination`` with :func:`atomic_write` (``directory``: as for
    :class:`AtomicFile`)."""
    with atomic_write(destination, fsync=fsync, directory=directory) as handle:
        handle.write(data)


def remove_stale_temporaries(destination: Path, dir_fd: int) -> None:
    """Remove the stale temporary files of ``destination`` (:func:`remove_if_stale`) from the
    directory open as ``dir_fd`` (``destination``'s, as the run checked it)."""
    try:
        names = os.listdir(dir_fd)
    except OSError:
        return
    for stale in temporaries_of(Path(destination), names):
        remove_if_stale(stale, dir_fd)


def remove_if_stale(path: Path, dir_fd: int | None = None) -> bool:
    """Remove ``path``, one of cryotiff's temporary files, if no live process is writing it.
    With ``dir_fd`` (a descriptor of ``path``'s directory), ``path``'s name is looked up there.

    Stale means: a regular file (not a link) whose lock can be taken. A file whose lock is held
    is never touched. An empty one may have been created an instant ago by a writer that has
    not taken its lock yet: it is removed all the same (at once, not after an age, which a
    clock of a file server can make wrong), since such a writer, once it has its lock, sees
    that its name is gone and writes under another (:class:`AtomicFile`).

    Never call it on a file this process is writing: where ``flock`` is emulated with POSIX
    record locks (NFS), closing the checking descriptor would release the writer's own lock.

    Returns:
        True if it was removed.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    name = os.fspath(path) if dir_fd is None else Path(path).name
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError:
        return False  # gone already, a link, or unreadable: not ours to judge
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            return False
        try:
            # Shared: a read-only descriptor may take it on every file system (NFS too), and it
            # is refused exactly when a writer holds its exclusive lock.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False  # a live writer
            return False  # locks unsupported here: cannot tell, so leave it
        try:
            if not _same_file(os.stat(name, dir_fd=dir_fd, follow_symlinks=False), status):
                return False
            os.unlink(name, dir_fd=dir_fd)
        except OSError:
            return False
        return True
    finally:
        os.close(fd)
