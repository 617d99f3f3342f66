"""RELION's External-job contract (``pipeline_control.cpp``).

:class:`PipelineControl`: one of ``RELION_JOB_EXIT_SUCCESS`` / ``RELION_JOB_EXIT_FAILURE`` /
``RELION_JOB_EXIT_ABORTED`` is written in the ``--pipeline_control`` directory when the program
ends, ``RELION_JOB_ABORT_NOW`` (the GUI's "Abort" button) is obeyed between pages, and
``RELION_OUTPUT_NODES.star`` names the output ``movies.star`` so that the pipeliner offers it to
the next job. :class:`PipelineReporter` keeps every finished result and stops the run when RELION
asks.

Like the rest of the library this module never prints: it returns what happened and the CLI
prints it.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .convert import MovieResult
from .errors import OutputError
from .io.atomic import CheckedDirectory, write_bytes_atomically
from .io.star import write_star_atomically
from .jobs import Job, Reporter

#: RELION's file names (``pipeline_control.h``, ``pipeliner.cpp``).
EXIT_SUCCESS_NAME = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE_NAME = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED_NAME = "RELION_JOB_EXIT_ABORTED"
ABORT_NOW_NAME = "RELION_JOB_ABORT_NOW"
OUTPUT_NODES_NAME = "RELION_OUTPUT_NODES.star"

#: The node type of a movie STAR file: RELION 4/5 read the label (``rlnPipeLineNodeTypeLabel``),
#: RELION 3.1 the number (``rlnPipeLineNodeType``, 0 = movies); both columns are written.
MOVIES_NODE_TYPE_LABEL = "MicrographMovieGroupMetadata.star.relion"
MOVIES_NODE_TYPE_NUMBER = 0


class JobAborted(BaseException):
    """RELION asked the job to stop (``RELION_JOB_ABORT_NOW``).

    A BaseException, like KeyboardInterrupt, so that it stops the whole run instead of failing
    one movie, and every cleanup path (the temporary ``.tif.tmp`` is removed) runs on the way out.
    """


def pipeline_control_from_argv(argv: Sequence[str]) -> Path | None:
    """The ``--pipeline_control`` (or ``--pipeline-control``) directory from the raw arguments.

    Read before argparse so that even a command line the parser rejects ends with
    ``RELION_JOB_EXIT_FAILURE``: otherwise RELION would show the job as running for ever.
    Given without a directory (as an External job parameter with an empty value, because the
    job directory is not known when the job is set up), it is the ``--o`` directory, which RELION
    sets to the job directory.
    """
    names = ("--pipeline_control", "--pipeline-control")
    control: str | None = None
    output = "./"
    for index, argument in enumerate(argv):
        following = argv[index + 1] if index + 1 < len(argv) else None
        if argument in names:
            control = following if following is not None and not following.startswith("--") else ""
        elif argument.startswith(tuple(name + "=" for name in names)):
            control = argument.split("=", 1)[1]
        elif argument == "--o" and following is not None:
            output = following
        elif argument.startswith("--o="):
            output = argument[len("--o=") :]
    if control is None:
        return None
    return Path(control or output)


class PipelineControl:
    """RELION's External-job contract for one directory (the job directory).

    Attributes:
        directory: where the exit files, ``RELION_JOB_ABORT_NOW`` and ``RELION_OUTPUT_NODES.star``
            live.
        abort_check_seconds: minimum time between two looks for ``RELION_JOB_ABORT_NOW``.
    """

    def __init__(self, directory: Path, abort_check_seconds: float = 1.0):
        self.directory = Path(directory)
        self.abort_check_seconds = abort_check_seconds
        self._last_check = float("-inf")
        # The job directory as the run found it when it started (None: not there yet; checked
        # once it is, or made when a file is first written): RELION's files go there or nowhere.
        self._checked: CheckedDirectory | None = None
        self._check()

    def _check(self) -> CheckedDirectory | None:
        """The job directory as checked: first now, if it was not there before."""
        if self._checked is None:
            with contextlib.suppress(OutputError):
                self._checked = CheckedDirectory(self.directory, self.directory)
        return self._checked

    def _open_directory(self, name: str) -> int:
        """A descriptor of the job directory as checked (the caller closes it), for writing
        ``name`` there; the directory is made (and checked) if it was not there.

        Raises:
            OutputError: naming the file: the directory cannot be made, or was replaced since
                it was checked.
        """
        try:
            if self._check() is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._checked = CheckedDirectory(self.directory, self.directory)
            return self._checked.open()
        except OSError as exc:
            raise OutputError(f"{self.directory / name}: not written: {self.directory}: cannot create the "
                              f"directory ({exc.strerror or exc})") from None
        except OutputError as exc:
            raise OutputError(f"{self.directory / name}: not written: {exc}") from None

    def _remove(self, names: Sequence[str]) -> None:
        checked = self._check()
        if checked is None:
            return  # no directory: nothing to remove
        try:
            descriptor = checked.open()
        except OutputError:
            return  # replaced since the check: nothing is removed there
        try:
            for name in names:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=descriptor)
        finally:
            os.close(descriptor)

    def start(self) -> None:
        """Remove the exit files of an earlier run (RELION decides on the first it finds)."""
        self._remove((EXIT_SUCCESS_NAME, EXIT_FAILURE_NAME, EXIT_ABORTED_NAME))

    def abort_requested(self, force: bool = False) -> bool:
        """True if RELION asked the job to stop (checked at most every ``abort_check_seconds``)."""
        now = time.monotonic()
        if not force and now - self._last_check < self.abort_check_seconds:
            return False
        self._last_check = now
        return (self.directory / ABORT_NOW_NAME).exists()

    def finish(self, exit_status: int, aborted: bool = False) -> Path:
        """Write the exit file for ``exit_status`` (0: success), an empty file written as every
        output is (atomically: a link at its name is replaced, never written through) into the
        job directory as checked; returns it.

        Raises:
            OutputError: it cannot be written (the CLI says so, and reports the exit status
                anyway).
        """
        if aborted:
            name = EXIT_ABORTED_NAME
            self._remove((ABORT_NOW_NAME,))  # or a rerun would stop at once
        else:
            name = EXIT_SUCCESS_NAME if exit_status == 0 else EXIT_FAILURE_NAME
        path = self.directory / name
        descriptor = self._open_directory(name)
        try:
            write_bytes_atomically(path, b"", directory=descriptor)
        finally:
            os.close(descriptor)
        return path

    def write_output_nodes(self, movies_star: Path) -> Path:
        """Write ``RELION_OUTPUT_NODES.star`` naming ``movies_star`` (as RELION will look it up:
        relative to the project directory, i.e. the current directory).

        Raises:
            OutputError: the file cannot be written.
        """
        nodes = [{
            "rlnPipeLineNodeName": str(movies_star),
            "rlnPipeLineNodeTypeLabel": MOVIES_NODE_TYPE_LABEL,
            "rlnPipeLineNodeType": MOVIES_NODE_TYPE_NUMBER,
        }]
        path = self.directory / OUTPUT_NODES_NAME
        descriptor = self._open_directory(OUTPUT_NODES_NAME)  # the job directory as checked
        try:
            write_star_atomically(path, {"output_nodes": nodes}, [f"# Written by cryotiff {__version__}"],
                                  dir_fd=descriptor)
        finally:
            os.close(descriptor)
        return path


class PipelineReporter(Reporter):
    """Passes progress on to ``inner``, keeps every finished result (so that an interrupted run
    can still be reported) and, with a :class:`PipelineControl`, stops the run when RELION asks.

    Other attributes (``out``, ``err`` of the terminal reporter) are those of ``inner``.
    """

    def __init__(self, inner: Reporter, control: PipelineControl | None = None):
        self.inner = inner
        self.control = control
        self.results: list[MovieResult] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _check_abort(self, force: bool = False) -> None:
        if self.control is not None and self.control.abort_requested(force):
            raise JobAborted(f"{self.control.directory / ABORT_NOW_NAME}: RELION asked the job to abort")

    def movie_started(self, job: Job, index: int, total: int) -> None:
        self._check_abort(force=True)
        self.inner.movie_started(job, index, total)

    def page_done(self, job: Job, done: int, total: int) -> None:
        self.inner.page_done(job, done, total)
        self._check_abort()

    def movie_finished(self, result: MovieResult) -> None:
        self.results.append(result)
        self.inner.movie_finished(result)

    def message(self, text: str) -> None:
        self.inner.message(text)

    def warning(self, text: str) -> None:
        self.inner.warning(text)

