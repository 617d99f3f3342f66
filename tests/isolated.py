"""Run library calls in a separate process under a memory limit and a time limit.

A hostile input must give one of cryotiff's own errors: not a hang, not a crash, not unbounded
memory. Calls made in the test process itself could hang the suite or bring the OOM killer, so
:class:`IsolatedRunner` runs them in one long-lived worker process whose address space is limited
with ``resource.setrlimit(RLIMIT_AS, ...)`` (a ``MemoryError`` there is a failed test, not a dead
machine) and waits for each answer (a worker that does not answer within a hang limit is killed and
restarted, and the call is reported as hanging). The worker is started once and reused, so
that fuzzing hundreds of inputs costs one interpreter start.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import traceback
from dataclasses import dataclass
from typing import Any

from .helpers import HANG_SECONDS

#: Address space the worker may map beyond what it has after importing cryotiff (bytes).
DEFAULT_HEADROOM_BYTES = 768 * 2**20
#: How long a call (and the worker's start) may take before it is called a hang: only a real
#: hang must reach it (tests/helpers.py HANG_SECONDS; a loaded 2-core machine is slow).
DEFAULT_TIMEOUT_SECONDS = HANG_SECONDS


@dataclass(frozen=True)
class Outcome:
    """What one isolated call did.

    Attributes:
        kind: ``"ok"`` (returned), ``"error"`` (raised), ``"hang"`` (no answer in time) or
            ``"crash"`` (the worker died).
        value: ``repr`` of the return value (``ok``).
        error_type: the exception's class name (``error``).
        is_cryotiff_error: whether it derives from :class:`cryotiff.errors.CryotiffError`.
        message: ``str`` of the exception, or what happened.
        trace: the formatted traceback (``error``).
    """

    kind: str
    value: str = ""
    error_type: str = ""
    is_cryotiff_error: bool = False
    message: str = ""
    trace: str = ""

    @property
    def clean(self) -> bool:
        """Returned, or raised one of cryotiff's own errors."""
        return self.kind == "ok" or (self.kind == "error" and self.is_cryotiff_error)

    def describe(self) -> str:
        if self.kind == "error":
            return f"{self.error_type}: {self.message}\n{self.trace}"
        return f"{self.kind}: {self.value or self.message}"


def _virtual_memory_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _worker(connection, headroom_bytes: int) -> None:
    import resource

    import cryotiff.cli  # noqa: F401  (import everything a call may need before measuring)
    import cryotiff.convert  # noqa: F401
    import cryotiff.io.eer  # noqa: F401
    import cryotiff.io.mrc  # noqa: F401
    import cryotiff.io.star  # noqa: F401
    import cryotiff.io.tiff  # noqa: F401
    import cryotiff.inputs  # noqa: F401
    import cryotiff.jobs  # noqa: F401
    from cryotiff.errors import CryotiffError

    limit = _virtual_memory_bytes() + headroom_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    connection.send(("ready", limit))
    while True:
        try:
            request = connection.recv()
        except EOFError:
            return
        module_name, function_name, args, kwargs = request
        try:
            function = getattr(importlib.import_module(module_name), function_name)
            value = function(*args, **kwargs)
            answer = ("ok", repr(value)[:2000], "", False, "", "")
        except BaseException as exc:  # noqa: BLE001 - everything is reported to the test
            answer = (
                "error",
                "",
                type(exc).__name__,
                isinstance(exc, CryotiffError),
                str(exc)[:4000],
                traceback.format_exc()[-6000:],
            )
            if isinstance(exc, KeyboardInterrupt):
                connection.send(answer)
                return
        connection.send(answer)


class IsolatedRunner:
    """A worker process that runs ``module.function(*args)`` calls under limits (see the module
    docstring). Use as a context manager; :meth:`call` restarts the worker after a hang or crash."""

    def __init__(self, headroom_bytes: int = DEFAULT_HEADROOM_BYTES) -> None:
        self.headroom_bytes = headroom_bytes
        self._context = multiprocessing.get_context("spawn")
        self._process = None
        self._connection = None
        self.limit_bytes = 0

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_worker, args=(child, self.headroom_bytes), daemon=True)
        # Each thread a call starts would otherwise reserve a 64 MB malloc arena of address space.
        previous = os.environ.get("MALLOC_ARENA_MAX")
        os.environ["MALLOC_ARENA_MAX"] = "2"
        try:
            process.start()
        finally:
            if previous is None:
                del os.environ["MALLOC_ARENA_MAX"]
            else:
                os.environ["MALLOC_ARENA_MAX"] = previous
        child.close()
        if not parent.poll(DEFAULT_TIMEOUT_SECONDS):
            process.kill()
            raise RuntimeError("the isolated worker did not start")
        state, self.limit_bytes = parent.recv()
        assert state == "ready"
        self._process, self._connection = process, parent

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
            self._connection.close()
        self._process = self._connection = None

    def call(self, target: str, *args: Any, timeout: float = DEFAULT_TIMEOUT_SECONDS, **kwargs: Any) -> Outcome:
        """Run ``target`` (``"package.module:function"``) with the arguments (picklable)."""
        if self._process is None or not self._process.is_alive():
            self._stop()
            self._start()
        module_name, function_name = target.split(":")
        self._connection.send((module_name, function_name, args, kwargs))
        if not self._connection.poll(timeout):
            self._stop()
            return Outcome("hang", message=f"no answer within {timeout:g} s")
        try:
            kind, value, error_type, is_cryotiff, message, trace = self._connection.recv()
        except (EOFError, OSError):
            code = self._process.exitcode if self._process is not None else None
            self._stop()
            return Outcome("crash", message=f"the worker died (exit code {code})")
        return Outcome(kind, value, error_type, is_cryotiff, message, trace)

    def __enter__(self) -> "IsolatedRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()


# --------------------------------------------------------------------------- calls to isolate


def read_movie(path: str) -> tuple[int, tuple[int, int], str]:
    """Open a movie as the pipeline does and make every page of its TIFF (EER: rendered with the
    default options); returns ``(pages, shape, dtype)``."""
    from pathlib import Path

    from cryotiff.convert import ConvertOptions, WiderTypeNeeded, open_page_source

    source = open_page_source(Path(path), ConvertOptions(eer_grouping=1))
    try:
        while True:
            try:
                for index in range(source.n_pages):
                    source.page(index)
                break
            except WiderTypeNeeded as retry:  # as convert_movie does: every page again, wider
                source.retype(retry.dtype)
        return source.n_pages, tuple(source.shape_yx), str(source.dtype)
    finally:
        source.close()


def run_cli(argv: list[str], cwd: str) -> tuple[int, str, str]:
    """``convert-to-tiff argv`` in ``cwd``; returns ``(exit status, stdout, stderr)``."""
    import contextlib
    import io

    from cryotiff.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(list(argv))
    finally:
        os.chdir(previous)
    return status, out.getvalue(), err.getvalue()


def expand_list(path: str) -> list[str]:
    """The movies a STAR or ``.lst`` file names, as ``--i`` expands it."""
    from pathlib import Path

    from cryotiff.inputs import expand_inputs

    return [str(movie) for movie in expand_inputs([path], Path(path).parent / "out")]
