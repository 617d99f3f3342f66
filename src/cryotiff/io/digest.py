"""SHA-256 digests of open files: read through a descriptor with ``os.preadv`` (its offset, which
a reader may share, is neither used nor moved), and one begun on a thread of its own while the
caller goes on (:class:`BackgroundDigest`: a written file hashed while it is synced to the disk).

This module imports nothing from the rest of cryotiff.
"""

from __future__ import annotations

import hashlib
import os
import threading

#: The read buffer: hashlib releases the GIL while it hashes a block of this size.
_BLOCK_BYTES = 1 << 20


class DigestStopped(Exception):
    """A :class:`BackgroundDigest` was stopped before it finished."""


def descriptor_sha256(descriptor: int, stop: threading.Event | None = None) -> tuple[int, str]:
    """``(bytes read, SHA-256 in hexadecimal)`` of the file open on ``descriptor``, from its
    first byte to its end, read into one 1 MiB buffer, block by block.

    Raises:
        DigestStopped: ``stop`` was set (checked between blocks).
        OSError: reading failed.
    """
    digest = hashlib.sha256()
    buffer = bytearray(_BLOCK_BYTES)
    view = memoryview(buffer)
    offset = 0
    while True:
        if stop is not None and stop.is_set():
            raise DigestStopped
        n_bytes = os.preadv(descriptor, [buffer], offset)
        if not n_bytes:
            break
        digest.update(view[:n_bytes])
        offset += n_bytes
    return offset, digest.hexdigest()


class BackgroundDigest:
    """:func:`descriptor_sha256` of a file, begun now on a thread of its own, through a duplicate
    of ``descriptor`` (closed when the digest ends).

    Made once a file's last byte is written, it hashes the file while the caller syncs it to the
    disk: the ``fsync`` waits for the device and the hash needs a processor, so the two overlap.
    The digest describes the file as it was when hashing began (``status_before``, its
    ``os.fstat`` then); whoever uses it compares that with the file's status when it is used.

    Attributes:
        status_before: ``os.fstat`` of the file when hashing began.
    """

    def __init__(self, descriptor: int):
        self._descriptor = os.dup(descriptor)
        try:
            self.status_before = os.fstat(self._descriptor)
        except BaseException:
            os.close(self._descriptor)
            raise
        self._stop = threading.Event()
        self._outcome: tuple[int, str] | BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cryotiff-output-digest")
        try:
            self._thread.start()
        except BaseException:
            os.close(self._descriptor)
            raise

    def _run(self) -> None:
        try:
            self._outcome = descriptor_sha256(self._descriptor, self._stop)
        except BaseException as exc:  # noqa: BLE001 - handed to result(), which raises it
            self._outcome = exc
        finally:
            os.close(self._descriptor)

    def result(self) -> tuple[int, str]:
        """Wait for it and return ``(bytes hashed, SHA-256 in hexadecimal)``.

        Raises:
            OSError: reading the file failed.
            DigestStopped: :meth:`stop` was called first.
        """
        self._thread.join()
        outcome = self._outcome
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        return outcome

    def stop(self) -> None:
        """Stop hashing (at the next 1 MiB block) and wait for the thread; idempotent."""
        self._stop.set()
        self._thread.join()
