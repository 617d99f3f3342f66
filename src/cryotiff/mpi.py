"""``convert-to-tiff-mpi``: ``convert-to-tiff`` spread over MPI ranks (and nodes).

Run it as ``mpirun -np N convert-to-tiff-mpi --i ... --o ...`` with the options of
``convert-to-tiff``. This is the only module that imports mpi4py.

How the work is shared, and why it differs from ``relion_convert_to_tiff_mpi``:

* Rank 0 plans the run (inputs, output names). With ``--only_do_unfinished`` the ranks check
  which movies are already complete *before* anything is handed out, each rank a share of the
  list, so finished movies cost no rank a turn. RELION gives every rank a fixed round-robin
  share and lets each rank skip its own finished movies: ranks whose share was already done
  sit idle (RELION issue #985).
* Movies are handed out one at a time to whichever rank is free, largest first, so that ranks
  stay busy when movies differ in size (RELION: fixed round-robin).
* Rank 0 converts too. A service thread on rank 0 answers the other ranks' requests for the next
  movie while its main thread converts, so that a rank on another node never waits for rank 0 to
  finish a movie. Only that thread talks to MPI while the main thread converts, so the MPI
  library needs ``MPI_THREAD_SERIALIZED`` (Open MPI and MPICH give ``MPI_THREAD_MULTIPLE``).
* Waiting is done by polling with short sleeps: Open MPI's blocking calls spin a core at 100 %,
  which would steal a core from the ``--j`` threads of a rank that is still converting.
* Every per-movie result goes to rank 0, which prints failures and warnings once, the summary,
  ``movies.star`` and the ``--report``. The rank converting a movie prints its
  ``Processing X into Y`` line.
* ``--estimate_gain`` (RELION refuses it under MPI): each movie is estimated by one rank into a
  state that starts from the common starting state (fresh, or the ``--gain`` files broadcast by
  rank 0); rank 0 merges every movie's state into the run's state with :func:`cryotiff.gain.merge`
  (smallest gain wins, consistent counters add), which gives the gain map of a serial run, and
  saves the state files after every round of movies (one movie per rank) and at the end.
* A run stopped early (Ctrl-C or SIGTERM reaching any rank) stops every rank: rank 0 tells the
  ranks still converting to stop (each looks after every page), each removes its partial file,
  waits for its manifest lines (written by a thread of their own) and says so; rank 0 reports
  what finished and ends the job once every rank has said so (at most
  :data:`STOPPED_WAIT_SECONDS`), so that no TIFF written is left out of the manifest, as
  ``convert-to-tiff`` waits for its manifest lines before it exits. When Open MPI itself is
  ending the job (:func:`being_killed`), SIGKILL follows in a fraction of a second: rank 0 then
  waits only briefly before it reports.
* No rank ever waits for ever: an unexpected error anywhere outside one movie's conversion makes
  the rank print it and abort the whole MPI job (``MPI_Abort``); inside a movie's conversion it
  becomes that movie's failure and the run goes on.
* A rank that dies (its node lost, ``kill -9``, out of memory) ends the job with a message naming
  it, its node and the movie it was converting. For that, under Open MPI's ``mpirun``, Open MPI's
  fault tolerance (ULFM, ``mpi_ft_enable``) is switched on unless the environment already sets
  it: without it, the first rank to notice the closed connection aborts with "An error occurred
  in Socket closed ... rank 0 calling abort", which names the wrong rank. ``mpirun`` still ends
  the whole job. A plain ``mpirun`` sends every rank SIGTERM (and SIGKILL 0.25 s later) as soon
  as a rank dies, usually before MPI reports the failure, so the run ends as interrupted: rank 0
  then tells the movies whose partial files the other ranks removed from those whose files remain
  by looking at the file system (:func:`stopped_run`); ``mpirun --with-ft ulfm`` lets MPI report
  the failure first, but misses a rank that exits with an error status of its own
  (``os._exit(3)``, a C library's ``exit(1)``; Open MPI 5.0.11): no rank is told, and ``mpirun``
  itself waits for ever (a plain ``mpirun`` ends the job). ULFM selects Open MPI's ob1 messaging
  layer (TCP or shared memory, not UCX): the ranks exchange only movie indices and results, so
  its speed does not matter here.
* If rank 0 itself dies, the first other rank to be stopped (mpirun's SIGTERM, or MPI's report
  under ULFM) names the movie rank 0 was converting and removes its partial file, which it
  tells by rank 0's pid in the name and a lock no one holds (:func:`dead_coordinator_line`).
  For that the ranks send to rank 0 without blocking inside MPI (:func:`send_quietly`), and a
  failure of rank 0 that MPI reports in the middle of a movie stops it as an interrupt does.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from .cli import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CheckedOutputs,
    Interruption,
    TerminalReporter,
    WatchRecords,
    build_parser,
    estimate_lines,
    finish_estimation,
    finish_interrupted,
    format_bytes,
    option_conflicts,
    options_from_args,
    finish_verify,
    make_output_dir,
    manifest_key,
    names_never_fail_to_print,
    unplanned_verdict,
    verify_conflict,
    watch_from_args,
)
from .convert import ConvertOptions, MovieResult, RunContext
from .errors import CryotiffError, OptionError
from .io.atomic import CheckedDirectory
from .jobs import (
    FinishedCheck,
    Job,
    StaleTemporaries,
    check_finished,
    converting_again,
    estimate_movie,
    handle_job,
    interrupts_held,
    make_executor,
    plan,
    prepare,
    run_job,
    skipped_result,
    thread_pool,
)
from .manifest import Manifest
from .progress import file_nbytes
from .watch import WatchOptions

#: Message tags of the work-sharing protocol.
TAG_REQUEST = 17  # rank -> rank 0: the result of its last movie (or None), and "give me the next"
TAG_REPLY = 18  # rank 0 -> rank: the next movie's index, or None = no more work
TAG_STOP = 19  # rank 0 -> rank: the run is stopping; stop the movie being converted (its partial file removed)

#: Set in the environment before MPI starts, when ``mpirun`` of Open MPI started this process
#: (see the module docstring). Not for a process started alone or by ``srun``: there Open MPI may
#: not find the parameter set that ``mpi_ft_enable`` loads, and warns.
FAULT_TOLERANCE_ENVIRONMENT = {"OMPI_MCA_mpi_ft_enable": "true"}

#: Sleep between polls while waiting for a message. Short against a movie's conversion time
#: (seconds), long enough that a waiting rank uses no measurable CPU.
POLL_SECONDS = 0.002
#: Sleep between polls while waiting for the end of the run (latency does not matter there).
IDLE_POLL_SECONDS = 0.02

#: Options of ``convert-to-tiff`` that this program does not offer, with the reason.
MPI_UNSUPPORTED = {
    "demo": "--demo is not available in convert-to-tiff-mpi; run convert-to-tiff --demo",
    "benchmark": "--benchmark is not available in convert-to-tiff-mpi; run convert-to-tiff --benchmark",
    "check_gain": "--check_gain is not available in convert-to-tiff-mpi; run convert-to-tiff --check_gain (it reads "
                  "only the frames it needs, on one node, in seconds to minutes)",
    "pipeline_control": "--pipeline_control is not yet available in convert-to-tiff-mpi; run convert-to-tiff "
                        "(with --j for threads) in a RELION External job",
}


# --------------------------------------------------------------------------- entry point


def whole_lines_per_write(stream: TextIO) -> None:
    """Make each printed line reach ``stream``'s file in one write. Open MPI forwards every
    rank's output as it is written, so with unbuffered streams (``PYTHONUNBUFFERED``, ``-u``,
    common in job scripts) ``print``'s text and its newline, two writes, could be joined by
    another rank's line in between (``...m7.tifProgress: ...``). Line buffering keeps a line's
    text until its newline and writes both at once."""
    try:
        stream.reconfigure(line_buffering=True, write_through=False)  # type: ignore[attr-defined]
    except (AttributeError, ValueError, io.UnsupportedOperation):
        pass  # not a TextIOWrapper (a test's capture): its writes are whole already


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``convert-to-tiff-mpi``; returns the exit status (the same on every rank)."""
    import os

    if "OMPI_COMM_WORLD_SIZE" in os.environ:  # started by Open MPI's mpirun
        for name, value in FAULT_TOLERANCE_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    whole_lines_per_write(sys.stdout)
    whole_lines_per_write(sys.stderr)
    names_never_fail_to_print(sys.stdout, sys.stderr)
    # Ctrl-C on mpirun reaches the ranks as SIGTERM (then SIGKILL): turned into KeyboardInterrupt,
    # it lets the movie being written remove its temporary file, as Ctrl-C does in convert-to-tiff.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGCONT, _continued)
    try:
        return _run_command(comm, argv)
    except SystemExit:  # argparse (--help, --version, a rejected command line): the same on every rank
        raise
    except KeyboardInterrupt:
        if comm.rank != 0:
            say_if_the_coordinator_died()  # unless rank 0 is alive, and says what was stopped
            # Rank 0, interrupted too (or told by this rank), writes what finished and ends the job.
            ignore_interrupts()
            time.sleep(INTERRUPTED_RANK_WAIT_SECONDS)
        abort(comm, EXIT_INTERRUPTED, f"\nInterrupted (MPI rank {comm.rank}); the movies being written were removed.")
    except BrokenPipeError:  # output piped into "head" and the like
        abort(comm, EXIT_FAILED, "")
    except BaseException as exc:
        if is_rank_failure(exc):
            if comm.rank != 0:
                say_if_the_coordinator_died()
            if comm.rank != 0 and 0 not in failed_ranks(comm):
                # Rank 0 learns of it too and says which movie was lost (a rank waiting for the
                # end of the run often hears first, MPI telling it through the collective).
                ignore_interrupts()
                time.sleep(INTERRUPTED_RANK_WAIT_SECONDS)
            lost = lost_ranks_message(comm)
            if comm.rank == 0:
                report_the_error(f"MPI rank 0: {lost}")
            abort(comm, EXIT_FAILED, f"MPI rank {comm.rank}: {lost}; {STOPPING_AFTER_FAILURE}")
        # a bug: without the abort the other ranks would wait for this one for ever
        details = traceback.format_exc()
        if comm.rank == 0:
            report_the_error(f"MPI rank 0: unexpected error: {type(exc).__name__}: {exc}")
        abort(comm, EXIT_FAILED, f"MPI rank {comm.rank}: unexpected error; stopping every rank.\n{details}")
    return EXIT_FAILED  # not reached: abort does not return


#: Set once the run must stop (a signal, or rank 0's service thread). A KeyboardInterrupt that
#: a signal handler raises while Python runs a callback (a weakref's, during an import) is
#: printed and dropped, so the main thread also looks at this flag after every page and between
#: movies (:func:`stop_if_asked`).
STOP = threading.Event()


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM and SIGINT: the first stops the run (as KeyboardInterrupt); the ones that follow
    (mpirun's own SIGTERM after the one rank 0's service thread sent, a second Ctrl-C) are
    ignored, so that they cannot cut short the cleanup and the summary."""
    ignore_interrupts()
    _SIGNALS["interrupted"] = time.monotonic()
    STOP.set()
    raise KeyboardInterrupt


#: When this process last got SIGCONT and first got SIGTERM or SIGINT (``time.monotonic()``).
_SIGNALS: dict[str, float] = {}
#: Open MPI ends a job (Ctrl-C or SIGTERM on mpirun, a rank that died) by sending every rank
#: SIGCONT, SIGTERM 0.25 s later and SIGKILL 0.25 s after that (measured with Open MPI 5.0.11;
#: Slurm's time limit also sends SIGCONT before SIGTERM). A SIGTERM this soon after a SIGCONT
#: is taken for that: the rank is killed in a fraction of a second, whatever it waits for.
KILL_SEQUENCE_SECONDS = 1.0


def _continued(signum: int, frame: Any) -> None:
    _SIGNALS["continued"] = time.monotonic()


def being_killed() -> bool:
    """Whether the signal that stops the run began Open MPI's kill sequence (see
    :data:`KILL_SEQUENCE_SECONDS`): SIGKILL follows within a fraction of a second."""
    continued, interrupted = _SIGNALS.get("continued"), _SIGNALS.get("interrupted")
    return (continued is not None and interrupted is not None
            and 0.0 <= interrupted - continued <= KILL_SEQUENCE_SECONDS)


#: On a rank other than 0, while it shares the work: whether rank 0 has told it to stop
#: (:data:`TAG_STOP`); None elsewhere.
_told_to_stop: Callable[[], bool] | None = None


def stop_if_asked() -> None:
    """Raise KeyboardInterrupt in the main thread once the run must stop (see :data:`STOP`), or
    once rank 0 has told this rank to stop (a rank that got no signal itself)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if not STOP.is_set() and _told_to_stop is not None:
        try:
            told = _told_to_stop()
        except Exception as exc:
            if not is_rank_failure(exc):
                raise
            # Rank 0 died (MPI says so under ULFM): the movie stops here as if told to, its
            # partial file removed, and the rank then ends the job, naming rank 0 (main). Not
            # the movie's failure with a traceback.
            told = True
        if told:
            ignore_interrupts()
            STOP.set()
    if STOP.is_set():
        raise KeyboardInterrupt


#: Rank 0, while ``run_conversion`` runs with ``--report``: writes the report in state ``error``
#: with the movies done so far, given the error that stopped the run (:func:`report_the_error`).
_error_report: Callable[[str], None] | None = None
_error_report_lock = threading.Lock()


def report_the_error(message: str) -> None:
    """Rank 0, before it aborts the job after an error outside the stop protocol (a bug, a rank
    that died outside the sharing of the work): the ``--report`` in state ``error``, as
    ``convert-to-tiff`` writes it (``cli._report_if_failed``), once. Writing it must not hide
    the error: its own failure is only printed."""
    global _error_report
    with _error_report_lock:
        write, _error_report = _error_report, None
    if write is None:
        return
    try:
        write(message)
    except Exception as exc:
        with contextlib.suppress(Exception):
            print(f"ERROR: {exc}", file=sys.stderr, flush=True)


def error_report_on_rank_zero(rank: int, report_path: Path | None, results_so_far: Callable[[], list[MovieResult]],
                              options: ConvertOptions, inputs: Sequence[str],
                              checked: CheckedOutputs) -> Callable[[], None]:
    """On rank 0 with a ``--report``: from now on, :func:`report_the_error` writes it in state
    ``error`` with ``results_so_far()`` (called from any thread of rank 0). Returns what to call
    once the run's own report is written."""
    global _error_report
    if rank != 0 or report_path is None:
        return lambda: None
    from .report import write_report

    def write_error_report(message: str) -> None:
        write_report(report_path, results_so_far(), options, inputs, None, EXIT_FAILED, state="error",
                     error=message, directory=checked.report_dir)

    def reported() -> None:
        global _error_report
        with _error_report_lock:
            if _error_report is write_error_report:
                _error_report = None

    with _error_report_lock:
        _error_report = write_error_report
    return reported


def abort(comm: Any, status: int, message: str) -> None:
    """Print ``message`` and end every rank of the job with ``status``."""
    with contextlib.suppress(Exception):
        if message:
            print(message, file=sys.stderr, flush=True)
    comm.Abort(status)


#: What the user reads after a rank died.
STOPPING_AFTER_FAILURE = ("stopping every rank. Every .tif that exists is complete; rerun the same command "
                          "with --only_do_unfinished to convert the rest.")


def is_rank_failure(exc: BaseException) -> bool:
    """True if ``exc`` is MPI's report that another rank died (ULFM's MPI_ERR_PROC_FAILED and
    the errors that follow from it)."""
    from mpi4py import MPI

    failure_classes = {getattr(MPI, name, None) for name in ("ERR_PROC_FAILED", "ERR_PROC_FAILED_PENDING", "ERR_REVOKED")}
    return isinstance(exc, MPI.Exception) and exc.Get_error_class() in failure_classes - {None}


def failed_ranks(comm: Any) -> list[int]:
    """The ranks of ``comm`` that MPI knows to have died (empty if it cannot tell)."""
    from mpi4py import MPI

    try:
        failed = comm.Get_failed()
        try:
            ranks = MPI.Group.Translate_ranks(failed, list(range(failed.Get_size())), comm.Get_group())
        finally:
            failed.Free()
    except Exception:  # an MPI without ULFM, or a communicator that no longer answers
        return []
    return sorted(rank for rank in ranks if rank != MPI.UNDEFINED)


def lost_ranks_message(comm: Any, converting: dict[int, str] | None = None,
                       hosts: Sequence[str] | None = None) -> str:
    """``MPI rank 1 (on node7) stopped while converting m1.mrc``: which ranks died (and, on
    rank 0, the node of each and the movie each was given)."""
    converting = converting or {}
    ranks = failed_ranks(comm)
    if not ranks:
        return "another MPI rank stopped (its node lost, killed, or out of memory)"
    parts = [f"MPI rank {rank}" + (f" (on {hosts[rank]})" if hosts and rank < len(hosts) else "") + " stopped"
             + (f" while converting {converting[rank]}" if rank in converting else "")
             for rank in ranks]
    return "; ".join(parts)


def parse_arguments(comm: Any, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse on every rank (the outcome is the same everywhere); only rank 0 prints help, version
    or usage errors."""
    parser = build_parser()
    parser.prog = "convert-to-tiff-mpi"
    quiet = comm.rank != 0
    with contextlib.ExitStack() as stack:
        if quiet:
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        args = parser.parse_args(argv)
        if not args.i and not (args.demo or args.benchmark or args.verify_only):
            parser.error("the following arguments are required: --i")
    return args


def mpi_problem(args: argparse.Namespace, options: ConvertOptions) -> str | None:
    """Why this command line cannot run under MPI, or None."""
    for name, problem in MPI_UNSUPPORTED.items():
        if getattr(args, name, None) not in (None, False):  # --pipeline_control may be given empty
            return problem
    return option_conflicts(options)


def _run_command(comm: Any, argv: Sequence[str] | None) -> int:
    args = parse_arguments(comm, argv)
    reporter = MpiReporter(comm.rank)
    try:
        options = options_from_args(args)
        problem = mpi_problem(args, options)
        if problem:
            raise OptionError(problem)
        watch = watch_from_args(args)
        problem = verify_conflict(args) if args.verify_only else None
        if problem:
            raise OptionError(problem)
        check_launch(comm)
        check_thread_support(comm)
        if args.report:
            from .report import check_report_path

            check_report_path(Path(args.report))
            if comm.rank == 0:
                from .report import mark_a_gone_watch

                gone = mark_a_gone_watch(Path(args.report))
                if gone:
                    reporter.message(gone)
    except OptionError as exc:  # every rank gets the same verdict; rank 0 says it
        if comm.rank == 0:
            print(f"ERROR: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    report_path = Path(args.report) if args.report else None
    if args.verify_only:
        return run_verify(comm, args.i, options, reporter)
    if watch is not None:
        return run_watch(comm, args.i, options, reporter, report_path, watch)
    if args.dry_run:
        return run_on_rank_zero(comm, lambda: _dry_run(args.i, options, reporter, report_path))
    if options.estimate_gain:
        return run_estimation(comm, args.i, options, reporter, report_path)
    return run_conversion(comm, args.i, options, reporter, report_path)


def check_launch(comm: Any, environ: dict[str, str] | None = None) -> None:
    """Refuse a Slurm step of several tasks in which MPI sees one process: ``srun`` without a
    PMI that Open MPI understands starts every task as a lone "rank 0 of 1", and each would
    convert every movie, all writing the same files.

    Raises:
        OptionError: naming the two ways that work.
    """
    import os

    environ = os.environ if environ is None else environ
    try:
        slurm_tasks = int(environ.get("SLURM_STEP_NUM_TASKS", "1"))
    except ValueError:
        return
    launched_by_mpirun = "OMPI_COMM_WORLD_SIZE" in environ or "PMIX_RANK" in environ
    if comm.size == 1 and slurm_tasks > 1 and not launched_by_mpirun:
        raise OptionError(
            f"srun started {slurm_tasks} tasks, but MPI sees each as a single process (srun could not connect "
            "them through PMIx); every task would convert every movie. Use srun --mpi=pmix, or mpirun inside "
            "the allocation"
        )


def check_thread_support(comm: Any) -> None:
    """Rank 0's service thread needs ``MPI_THREAD_SERIALIZED`` (see the module docstring)."""
    from mpi4py import MPI

    if comm.size > 1 and MPI.Query_thread() < MPI.THREAD_SERIALIZED:
        raise OptionError(
            "convert-to-tiff-mpi needs an MPI library that supports MPI_THREAD_SERIALIZED "
            "(Open MPI and MPICH do; check how mpi4py was built)"
        )


def _dry_run(inputs: Sequence[str], options: ConvertOptions, reporter: TerminalReporter, report_path: Path | None) -> int:
    from .cli import run_dry_run

    return run_dry_run(inputs, options, reporter, None, report_path)


def run_on_rank_zero(comm: Any, function: Callable[[], int]) -> int:
    """Run ``function`` on rank 0 only (CryotiffError -> one ERROR line); every rank returns its
    exit status."""
    status = EXIT_OK
    if comm.rank == 0:
        try:
            status = function()
        except CryotiffError as exc:
            print(f"ERROR: {exc}", file=sys.stderr, flush=True)
            status = EXIT_USAGE if isinstance(exc, OptionError) else EXIT_FAILED
    return broadcast_status(comm, status)


def broadcast_status(comm: Any, status: int) -> int:
    """Rank 0's exit status to every rank, waited for without spinning a core."""
    import numpy as np

    buffer = np.array([status], dtype=np.int32)
    wait_quietly(comm.Ibcast(buffer, root=0), IDLE_POLL_SECONDS)
    return int(buffer[0])


def wait_quietly(request: Any, poll_seconds: float = POLL_SECONDS) -> None:
    """Wait for a nonblocking MPI request by polling (see the module docstring)."""
    while not request.Test():
        time.sleep(poll_seconds)


#: Sends that a signal interrupted before they ended: kept, so that the buffers MPI may still
#: read from are never freed.
_UNFINISHED_SENDS: list[Any] = []


def send_quietly(messages: Any, value: Any, dest: int, tag: int) -> None:
    """``messages.send(value, dest, tag)`` (a pkl5 communicator), waited for by polling: a
    blocking send of a large message (a movie's result) waits inside MPI, where no signal is
    handled, for as long as the receiver does not take it, for ever if it died; so mpirun's
    SIGTERM, after rank 0 died, found a rank that could not say which movie rank 0 left
    (:func:`say_if_the_coordinator_died`)."""
    request = messages.isend(value, dest=dest, tag=tag)
    try:
        # one part at a time: Testall of them all reports a dead receiver as MPI_ERR_IN_STATUS,
        # which is_rank_failure cannot tell from a bug
        for part in request:
            while not part.Test():
                time.sleep(POLL_SECONDS)
    except BaseException:
        _UNFINISHED_SENDS.append(request)
        raise


# --------------------------------------------------------------------------- terminal output


class MpiReporter(TerminalReporter):
    """What a rank prints: its own ``Processing X into Y`` lines. Results, warnings and errors
    reach rank 0 with the results and are printed there once (:meth:`report_result`), with the
    progress of the whole run: a line after each movie, never a bar (under ``mpirun`` a rank's
    output is a pseudo-terminal of Open MPI's, whatever ``mpirun``'s own output is, and several
    ranks print). No page progress: several ranks convert at once."""

    def __init__(self, rank: int):
        super().__init__(interactive=False)
        self.rank = rank
        self.page_bars = False
        self._lock = threading.RLock()  # rank 0's service thread and main thread both print; re-entered by warning()

    def page_done(self, job: Job, done: int, total: int) -> None:
        """Only :func:`stop_if_asked`: the run's progress counts whole movies, from every rank
        alike."""
        stop_if_asked()

    def movie_finished(self, result: MovieResult) -> None:
        """Nothing on the converting rank: rank 0 reports the result when it collects it."""

    def report_result(self, result: MovieResult) -> None:
        """Rank 0: print a collected result's warnings (each text once per run) and failure."""
        with self._lock:
            TerminalReporter.movie_finished(self, result)

    def message(self, text: str) -> None:
        with self._lock:
            super().message(text)

    def warning(self, text: str, repeat: bool = False) -> None:
        with self._lock:
            super().warning(text, repeat)


# --------------------------------------------------------------------------- work sharing


#: What rank 0 answers when no work is ready yet but more may come (``--watch``).
WAIT = "wait"
#: How long a rank told to wait sleeps before it asks again.
WAIT_POLL_SECONDS = 0.25


class WorkQueue:
    """Indices handed out in order, each once, and which rank works on which; thread-safe.

    A queue made with ``complete=False`` grows (:meth:`add`, from another thread) until
    :meth:`finish`; until then, an empty queue answers :data:`WAIT` instead of None.
    """

    def __init__(self, order: Sequence[int] = (), complete: bool = True):
        self._order = list(order)
        self._next = 0
        self._working: dict[int, int] = {}  # index -> rank, handed out and not yet done
        self._complete = complete
        self._closed = False
        self._lock = threading.Lock()

    def take(self, rank: int = 0) -> int | str | None:
        """The next index for ``rank``; :data:`WAIT` when none is ready but more may come;
        None when all are handed out (or the queue is closed)."""
        with self._lock:
            if self._closed:
                return None
            if self._next >= len(self._order):
                return None if self._complete else WAIT
            self._next += 1
            index = self._order[self._next - 1]
            self._working[index] = rank
            return index

    def add(self, indices: Sequence[int]) -> None:
        with self._lock:
            self._order.extend(indices)

    def finish(self) -> None:
        """Nothing more will be added."""
        with self._lock:
            self._complete = True

    def done(self, index: int) -> None:
        with self._lock:
            self._working.pop(index, None)

    def close(self) -> None:
        """Hand out nothing more (the run is stopping)."""
        with self._lock:
            self._closed = True

    def working(self) -> dict[int, int]:
        """``{index: rank}`` of the work handed out and not yet done."""
        with self._lock:
            return dict(self._working)

    def busy(self) -> bool:
        """Work waits to be handed out or is being done."""
        with self._lock:
            return bool(self._working) or self._next < len(self._order)


#: A rank's request that says it was interrupted (Ctrl-C, SIGTERM) instead of asking for work.
INTERRUPTED = "interrupted"
#: A rank's last message: it has no more work (or was stopped), its partial file is removed and
#: its manifest lines are written; ending the job no longer loses anything of it.
STOPPED = "stopped"
#: How long rank 0, stopping early, waits for every other rank's :data:`STOPPED` before it ends
#: the job (less than :data:`INTERRUPTED_RANK_WAIT_SECONDS`, after which a rank ends it itself).
STOPPED_WAIT_SECONDS = 20.0
#: How long a rank that was interrupted waits for rank 0 to end the job before ending it itself.
INTERRUPTED_RANK_WAIT_SECONDS = 30.0


class WorkStopped(KeyboardInterrupt):
    """Rank 0: the run was stopped before all work was done (Ctrl-C or SIGTERM on any rank, or a
    rank died). A KeyboardInterrupt, so that every cleanup on the way out runs.

    Attributes:
        working: ``{index: rank}`` of the work handed out and not done when it stopped.
        reason: why, when it was not an interrupt (a rank died); "" otherwise.
        dead_ranks: the ranks that died.
    """

    def __init__(self, working: dict[int, int], reason: str = "", dead_ranks: Sequence[int] = (),
                 served: threading.Event | None = None, request: _StopRequest | None = None):
        super().__init__(reason)
        self.working = working
        self.reason = reason
        self.dead_ranks = list(dead_ranks)
        self._served = served  # set when rank 0's service thread has ended
        self._request = request
        self._deadline: float | None = None

    def late_results(self) -> dict[int, Any]:
        """``{index: result}`` of the work whose result came after rank 0 began to stop (a
        movie finished just then: its TIFF is in place), so far."""
        return self._request.late_results() if self._request is not None else {}

    def rank_values(self) -> dict[int, Any]:
        """``{rank: what its finish_rank() returned}`` of the other ranks that have said
        :data:`STOPPED` so far."""
        return self._request.rank_values() if self._request is not None else {}

    def wait_for_the_other_ranks(self) -> None:
        """Wait until every other rank has removed its partial file and written its manifest
        lines (:data:`STOPPED`), so that ending the job does not cut them short; in all, over
        every call, at most :data:`STOPPED_WAIT_SECONDS`. Not after a rank died: the job ends at
        once. When Open MPI is killing the job (:func:`being_killed`: a rank died, or Ctrl-C on
        mpirun) only until :func:`killed_deadline`: what rank 0 reports must be written before
        SIGKILL, and a dead rank never answers."""
        if self._served is None or self.reason:
            return
        if self._deadline is None:
            self._deadline = killed_deadline() if being_killed() else time.monotonic() + STOPPED_WAIT_SECONDS
        self._served.wait(max(self._deadline - time.monotonic(), 0.0))


class _StopRequest:
    """Why rank 0's service thread stopped the run; read by its main thread."""

    def __init__(self) -> None:
        self.reason = ""
        self.dead_ranks: list[int] = []
        self.collected = False  # set by the main thread once it reports what finished
        self.finished_values: dict[int, Any] = {}  # what each other rank's finish_rank() returned
        self.late: dict[int, Any] = {}  # results that came once the main thread had begun to report
        self._lock = threading.Lock()

    def keep_late(self, index: int, result: Any) -> None:
        with self._lock:
            self.late[index] = result

    def late_results(self) -> dict[int, Any]:
        with self._lock:
            return dict(self.late)

    def rank_stopped(self, rank: int, value: Any) -> None:
        with self._lock:
            self.finished_values[rank] = value

    def rank_values(self) -> dict[int, Any]:
        with self._lock:
            return dict(self.finished_values)


def share_work(
    comm: Any,
    order: Sequence[int],
    work: Callable[[int, Any], Any],
    collect: Callable[[int, int, Any], None],
    describe: Callable[[int], str] = str,
    queue: WorkQueue | None = None,
    data_of: Callable[[int], Any] | None = None,
    finish_rank: Callable[[], Any] | None = None,
    outputs: Sequence[tuple[Path, Path]] = (),
) -> list[Any]:
    """Run ``work(index, data)`` once for every index in ``order`` on whichever rank is free.

    Every rank must call this (with the same ``order``). On rank 0, ``collect(rank, index,
    result)`` receives every result, one call at a time (from rank 0's main thread or its
    service thread). Returns when every index is done and collected, on every rank. Results may
    be large (a gain estimate is 14 bytes per pixel): they travel as pickle-5 messages, which
    have no 2 GiB limit. ``describe(index)`` names an item in the message that ends the job
    when a rank dies.

    ``queue`` (rank 0): a growing :class:`WorkQueue` that another thread of rank 0 fills, in
    place of ``order`` (``--watch``); ranks with nothing to do wait until it is finished.
    ``data_of(index)`` (rank 0): what travels with the index, for work the other ranks do not
    know (the job of a movie found by ``--watch``); ``data`` is None without it.

    ``finish_rank()``: run by every rank other than 0 once it has no more work, also when the
    run stops early, before it tells rank 0 that it may be ended (:data:`STOPPED`): waiting
    for its manifest lines, which a thread of its own writes. Rank 0 returns only when every
    other rank has said so, and returns what ``finish_rank()`` returned on each (the others
    return ``[]``).

    ``outputs``: ``(movie, TIFF)`` of every movie of the run, the same on every rank, so that
    another rank can name the movie rank 0 was converting if rank 0 dies
    (:func:`dead_coordinator_line`).

    Raises:
        WorkStopped: on rank 0, when Ctrl-C or SIGTERM reaches any rank or a rank dies; nothing
            more is handed out, and every rank still converting is told to stop
            (:data:`TAG_STOP`). (A rank other than 0 that is interrupted tells rank 0, finishes
            and waits for rank 0 to end the job; rank 0 waits for that with
            :meth:`WorkStopped.wait_for_the_other_ranks`.)
    """
    from mpi4py.util import pkl5

    messages = pkl5.Intracomm(comm)
    hosts_and_pids = comm.allgather((processor_name(), os.getpid()))  # to name the node of a rank that dies
    hosts = [host for host, _ in hosts_and_pids]
    if comm.rank != 0:
        # Kept for the rest of the run: rank 0 may die after this rank's last movie too.
        _COORDINATOR.update(host=hosts[0], pid=hosts_and_pids[0][1], here=hosts[comm.rank], outputs=list(outputs))
        _ask_for_work(messages, work, finish_rank)
        return []
    queue = queue if queue is not None else WorkQueue(order)
    data_of = data_of or (lambda index: None)
    collect_lock = threading.Lock()
    stop = _StopRequest()

    def collect_one(rank: int, index: int, result: Any) -> None:
        with collect_lock:
            if stop.collected:  # the main thread is reporting what finished: it takes this in from there
                stop.keep_late(index, result)
                return
            collect(rank, index, result)
            queue.done(index)

    # Set when the service thread ends. Not Thread.is_alive() or join(): a KeyboardInterrupt in
    # the middle of join() makes Python 3.11 mark the running thread as stopped for good.
    served = threading.Event()
    if comm.size == 1:
        served.set()

    def serve() -> None:
        try:
            _serve(messages, queue, collect_one, stop, describe, hosts, data_of)
        finally:
            served.set()

    try:
        if comm.size > 1:
            threading.Thread(target=serve, name="cryotiff-mpi-service", daemon=True).start()
        while (index := queue.take(0)) is not None:
            stop_if_asked()
            if index == WAIT:
                time.sleep(WAIT_POLL_SECONDS)
                continue
            collect_one(0, index, work(index, data_of(index)))
        # The main thread may not call MPI while the service thread does (THREAD_SERIALIZED).
        while not served.wait(IDLE_POLL_SECONDS):
            stop_if_asked()
        stop_if_asked()
        return list(stop.rank_values().values())
    except KeyboardInterrupt:
        STOP.set()  # the service thread tells the other ranks to stop
        queue.close()
        with collect_lock:  # a result being collected now is counted as done
            working = queue.working()
            stop.collected = True
        raise WorkStopped(working, stop.reason, stop.dead_ranks, served, stop) from None


def _interrupt_main_thread() -> None:
    """Stop rank 0's main thread as SIGTERM does (it becomes KeyboardInterrupt there)."""
    STOP.set()
    signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)


def _serve(messages: Any, queue: WorkQueue, collect: Callable[[int, int, Any], None], stop: _StopRequest,
           describe: Callable[[int], str] = str, hosts: Sequence[str] = (),
           data_of: Callable[[int], Any] = lambda index: None) -> None:
    """Rank 0's service thread: answer every request until each other rank has been told that
    the work is done and each has said it may be ended (:data:`STOPPED`). A rank that reports
    an interrupt, or one that dies, stops the run: the main thread is interrupted and writes
    what finished (see :class:`WorkStopped`). Once the run stops (also when rank 0's main
    thread was interrupted), every rank that has not stopped is told to (:data:`TAG_STOP`).
    After a rank died, if the main thread does not end the job within a while, this thread
    does."""
    from mpi4py import MPI

    try:
        status = MPI.Status()
        running = set(range(1, messages.size))  # ranks that have not sent STOPPED
        told_to_stop = False
        while running:
            if STOP.is_set() and not told_to_stop:
                queue.close()
                for rank in sorted(running):
                    messages.send(None, dest=rank, tag=TAG_STOP)
                told_to_stop = True
            if not messages.iprobe(source=MPI.ANY_SOURCE, tag=TAG_REQUEST, status=status):
                time.sleep(POLL_SECONDS)
                continue
            rank = status.Get_source()
            finished = messages.recv(source=rank, tag=TAG_REQUEST)
            if isinstance(finished, tuple) and finished[0] == STOPPED:
                # (STOPPED, what finish_rank returned, the (index, result) the rank could not send before)
                running.discard(rank)
                if finished[2] is not None:
                    collect(rank, *finished[2])
                stop.rank_stopped(rank, finished[1])
                continue
            if finished == INTERRUPTED:
                queue.close()
                if not STOP.is_set():
                    _interrupt_main_thread()
                continue
            index = queue.take(rank)
            reply = index if index is None or index == WAIT else (index, data_of(index))
            messages.send(reply, dest=rank, tag=TAG_REPLY)  # first, so that the rank starts at once
            if finished is not None:
                collect(rank, *finished)
    except BaseException as exc:
        if not is_rank_failure(exc):
            details = traceback.format_exc()
            report_the_error(f"MPI rank 0: unexpected error while sharing the work: {type(exc).__name__}: {exc}")
            abort(messages, EXIT_FAILED, f"MPI rank 0: unexpected error while sharing the work; stopping every "
                                         f"rank.\n{details}")
        queue.close()
        working = queue.working()
        dead = failed_ranks(messages)
        converting = {rank: describe(index) for index, rank in working.items()}
        stop.reason = f"ERROR: {lost_ranks_message(messages, converting, hosts)}; every rank is stopped."
        stop.dead_ranks = dead
        with contextlib.suppress(Exception):  # at once: mpirun may kill this rank any moment
            print(stop.reason, file=sys.stderr, flush=True)
        _interrupt_main_thread()
        time.sleep(INTERRUPTED_RANK_WAIT_SECONDS)  # the main thread ends the job long before
        abort(messages, EXIT_FAILED, f"MPI rank 0: {stop.reason}")


def _ask_for_work(messages: Any, work: Callable[[int, Any], Any], finish_rank: Callable[[], Any] | None = None) -> None:
    """A rank other than 0: ask for a movie, do it, send the result with the next request; at
    the end, ``finish_rank()`` and :data:`STOPPED`. Interrupted (Ctrl-C, SIGTERM, or told by
    rank 0 to stop: its page loop looks, :func:`stop_if_asked`), it tells rank 0, finishes,
    says :data:`STOPPED` and waits for rank 0 to end the job after writing what finished."""
    global _told_to_stop

    _told_to_stop = lambda: bool(messages.iprobe(source=0, tag=TAG_STOP))  # noqa: E731
    finished = None
    try:
        while True:
            send_quietly(messages, finished, dest=0, tag=TAG_REQUEST)
            finished = None  # a large result is not kept while the next movie is worked on
            while not messages.iprobe(source=0, tag=TAG_REPLY):
                stop_if_asked()
                time.sleep(POLL_SECONDS)
            reply = messages.recv(source=0, tag=TAG_REPLY)
            if reply is None:
                break
            stop_if_asked()
            if reply == WAIT:
                time.sleep(WAIT_POLL_SECONDS)
                continue
            index, data = reply
            finished = (index, work(index, data))
    except KeyboardInterrupt:
        _told_to_stop = None
        # First, in the quarter of a second before mpirun's SIGKILL: if the signal is mpirun
        # ending the job because rank 0 died, no other rank would name its movie.
        say_if_the_coordinator_died()
        _say_interrupted(messages)
        # A result not yet sent (the movie finished, its TIFF in place) goes with STOPPED.
        _finish_and_say_stopped(messages, finish_rank, interrupted=True, unsent=finished)
        raise
    _told_to_stop = None
    if _finish_and_say_stopped(messages, finish_rank, interrupted=False):
        raise KeyboardInterrupt


def _say_interrupted(messages: Any) -> None:
    ignore_interrupts()
    STOP.set()
    messages.send(INTERRUPTED, dest=0, tag=TAG_REQUEST)


def _finish_and_say_stopped(messages: Any, finish_rank: Callable[[], Any] | None, interrupted: bool,
                            unsent: tuple[int, Any] | None = None) -> bool:
    """``finish_rank()`` (a rank's manifest lines), then :data:`STOPPED` (with what it returned,
    and ``unsent``: the ``(index, result)`` of work done that rank 0 has not been sent) to rank
    0. A signal
    meanwhile is held until ``finish_rank`` returns (it would cut the waiting short), then
    told to rank 0 as an interrupt; one during the send of STOPPED is held until it is sent (a
    message cut short would keep rank 0 waiting for its rest). Returns whether the rank was
    interrupted."""
    caught: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        caught.append(signum)
        STOP.set()

    held = {}
    if not interrupted and threading.current_thread() is threading.main_thread():
        held = {signum: signal.signal(signum, hold) for signum in (signal.SIGINT, signal.SIGTERM)}
    value = None
    try:
        if finish_rank is not None:
            value = finish_rank()
        if caught:
            STOP.set()
            messages.send(INTERRUPTED, dest=0, tag=TAG_REQUEST)  # as _say_interrupted, before STOPPED
        send_quietly(messages, (STOPPED, value, unsent), dest=0, tag=TAG_REQUEST)
    finally:
        for signum, handler in held.items():
            signal.signal(signum, handler)
    if caught:
        ignore_interrupts()
        interrupted = True
    return interrupted


#: On a rank other than 0, once it shares the work (:func:`share_work`): rank 0's ``host`` and
#: ``pid``, this rank's host (``here``), and the ``outputs`` of the run, ``(movie, TIFF)``;
#: empty elsewhere.
_COORDINATOR: dict[str, Any] = {}


def dead_coordinator_line() -> str | None:
    """On a rank other than 0: if rank 0 died while converting a movie, the line that names it,
    and its partial file, which is removed; None otherwise.

    A movie's partial file carries the pid of the process writing it (``X.tif.cryotiff-<pid>-...``,
    :mod:`cryotiff.io.atomic`), and its writer holds a lock on it until it has removed or
    renamed it: one that carries rank 0's pid and whose lock is free is what a dead rank 0
    left (a live rank 0 removes its partial file before it lets the lock go). Where rank 0 ran
    on this node, its process must also be gone; on another node, an empty file is not taken
    for one (:func:`_written_into`). Removed with
    :func:`cryotiff.io.atomic.remove_if_stale`, so that of several ranks looking, one says it.
    """
    from .io.atomic import TEMPORARY_MARK, destination_of_temporary, remove_if_stale

    if not _COORDINATOR:
        return None
    gone = _coordinator_gone()
    if gone is False:
        return None
    mark = f"{TEMPORARY_MARK}{_COORDINATOR['pid']}-"
    movies: dict[Path, dict[str, tuple[Path, Path]]] = {}  # directory -> TIFF name -> (movie, TIFF)
    for source, destination in _COORDINATOR["outputs"]:
        movies.setdefault(Path(destination).parent, {})[Path(destination).name] = (source, destination)
    for directory, by_name in movies.items():  # each directory listed once: a run may have 10^4 movies
        try:
            names = os.listdir(directory if str(directory) else ".")
        except OSError:
            continue
        for name in names:
            if mark not in name or destination_of_temporary(name) not in by_name:
                continue
            source, destination = by_name[destination_of_temporary(name)]
            partial = directory / name
            if (gone or _written_into(partial)) and remove_if_stale(partial):
                return (f"ERROR: MPI rank 0 (on {_COORDINATOR['host']}) stopped while converting {source}: "
                        f"{destination} was not written (its partial file is removed), and this run writes no "
                        f"movies.star nor --report; {STOPPING_AFTER_FAILURE}")
    return None


def _coordinator_gone() -> bool | None:
    """Whether rank 0's process has ended (or is a zombie), when it ran on this node; None when
    it ran on another (its pid means nothing here)."""
    if _COORDINATOR.get("host") != _COORDINATOR.get("here"):
        return None
    pid = _COORDINATOR["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # another user's process of that pid: alive
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            return stat_file.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _written_into(path: Path) -> bool:
    """Not empty: an empty temporary file may be one that a live writer has just made and not
    yet locked (:func:`cryotiff.io.atomic.remove_if_stale` removes it all the same), which must
    not be taken for what a dead rank 0 on another node left (one on this node is known to be
    gone, :func:`_coordinator_gone`)."""
    try:
        return os.stat(path, follow_symlinks=False).st_size > 0
    except OSError:
        return False


def say_if_the_coordinator_died() -> None:
    """Print :func:`dead_coordinator_line` if there is one (at once: mpirun may kill this rank any
    moment). Never raises: the rank goes on stopping."""
    with contextlib.suppress(Exception):
        line = dead_coordinator_line()
        if line:
            print(line, file=sys.stderr, flush=True)


def ignore_interrupts() -> None:
    """From now on, Ctrl-C and SIGTERM do nothing (mpirun's own SIGTERM after the first
    signal, a second Ctrl-C): the run is already stopping."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def find_finished(
    comm: Any, jobs: Sequence[Job], options: ConvertOptions, context: RunContext | None
) -> dict[int, FinishedCheck]:
    """The ``--only_do_unfinished`` verdict on every job whose output exists (by index; see
    :func:`cryotiff.jobs.check_finished`). Each rank checks every ``size``-th job, since on a
    network file system opening thousands of files is slow."""
    mine = {}
    for index in range(comm.rank, len(jobs), comm.size):
        check = check_finished(jobs[index], options, context)
        if check.finished or check.reason:
            mine[index] = check
    return {index: check for part in comm.allgather(mine) for index, check in part.items()}


def largest_first(jobs: Sequence[Job], indices: Sequence[int]) -> list[int]:
    """The order movies are handed out in: largest input first (a stable sort, so equal sizes
    keep the list order). A large movie started last would keep one rank busy while the others
    have finished."""
    return sorted(indices, key=lambda index: -file_nbytes(jobs[index].source))  # a missing movie: 0, fails fast


class RunStopped(Exception):
    """Internal: the run ends before any movie with ``status`` on every rank (rank 0 has printed
    the reason)."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


def _error_status(exc: CryotiffError) -> int:
    return EXIT_USAGE if isinstance(exc, OptionError) else EXIT_FAILED


def agree(comm: Any, error: tuple[str, int] | None) -> None:
    """Every rank passes its own ``(message, status)`` or None; if any rank has an error, rank 0
    prints each message once and every rank raises :class:`RunStopped` with the first status."""
    errors = [e for e in comm.allgather(error) if e is not None]
    if not errors:
        return
    if comm.rank == 0:
        for message in dict.fromkeys(message for message, _ in errors):
            print(f"ERROR: {message}", file=sys.stderr, flush=True)
    raise RunStopped(errors[0][1])


def plan_on_rank_zero(comm: Any, inputs: Sequence[str], options: ConvertOptions,
                      checked: CheckedOutputs | None = None) -> tuple[list[Job], list[MovieResult]]:
    """Rank 0 expands the inputs, names the outputs and creates ``--o`` (as it checked it then:
    ``checked.output_dir``, where its own files go); every rank gets the plan."""
    planned: tuple | None = None
    if comm.rank == 0:
        try:
            jobs, failures = plan(inputs, options)
            output_dir = make_output_dir(options)
            if checked is not None:
                checked.output_dir = output_dir
            planned = (jobs, failures, None)
        except CryotiffError as exc:
            planned = (None, None, (str(exc), _error_status(exc)))
    jobs, failures, error = comm.bcast(planned, root=0)
    agree(comm, error if comm.rank == 0 else None)
    return jobs, failures


def prepare_everywhere(comm: Any, jobs: Sequence[Job], options: ConvertOptions, reporter: MpiReporter,
                       output_directory: CheckedDirectory | None = None) -> RunContext:
    """The run's gain (``--gain``), loaded on every rank; rank 0 first, since it prints the
    messages and writes ``gain-reference.mrc`` (into ``output_directory``, ``--o`` as rank 0
    checked it), then the others silently."""
    context, error = None, None
    if comm.rank == 0:
        try:
            context = prepare(jobs, options, reporter, write_files=True, output_directory=output_directory)
        except CryotiffError as exc:
            error = (str(exc), _error_status(exc))
    agree(comm, error)
    if comm.rank != 0:
        try:
            context = prepare(jobs, options, reporter, write_files=False)
        except CryotiffError as exc:
            error = (f"MPI rank {comm.rank}: {exc}", _error_status(exc))
    agree(comm, error)
    context.manifest = Manifest(options.output_dir)  # every rank adds the TIFFs it writes
    return context


def processor_name() -> str:
    """The node this rank runs on (``MPI_Get_processor_name``: its host name), for the
    ``--report``'s ``mpi_host``."""
    from mpi4py import MPI

    return MPI.Get_processor_name()


def responsive_executor(threads: int) -> ThreadPoolExecutor:
    """Threads for one movie's pages: ``--j`` of them, and one even for ``--j 1``. With the
    pages made in a worker thread, the main thread only waits and writes, so SIGTERM (Ctrl-C on
    mpirun) is handled at once; mpirun sends SIGKILL about 0.2 s later, and a main thread busy
    encoding a large frame in C would not get to remove its temporary file in time. Costs nothing:
    with one worker the main thread waits while it works."""
    return ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="cryotiff")


def converted_here(job: Job, rank: int, host: str, convert: Callable[[], MovieResult]) -> MovieResult:
    """``convert()`` for ``job`` on this rank: a bug becomes the movie's failure
    (:func:`unexpected_failure`); the result says which rank and node converted it."""
    try:
        result = convert()
    except Exception as exc:
        result = unexpected_failure(job, rank, exc, "converting")
    result.details["mpi_rank"] = rank
    result.details["mpi_host"] = host
    return result


def unexpected_failure(job: Job, rank: int, exc: Exception, what: str) -> MovieResult:
    """A bug while handling one movie becomes that movie's failure (the traceback goes to
    stderr for the bug report) and the run goes on."""
    print(f"MPI rank {rank}: unexpected error {what} {job.source}:\n{traceback.format_exc()}",
          file=sys.stderr, flush=True)
    return MovieResult(job.source, job.destination, "failed",
                       f"{job.source}: unexpected error on MPI rank {rank}: {type(exc).__name__}: {exc}")


def manifest_written(manifest: Manifest, reporter: MpiReporter) -> list[Path]:
    """Wait until ``manifest`` holds every TIFF this rank wrote; say what could not be added,
    and return those outputs."""
    for problem in manifest.wait():
        reporter.warning(problem)
    return manifest.unrecorded()


def rank_end(manifest: Manifest, reporter: MpiReporter) -> dict[str, list[Path]]:
    """A rank's last word to rank 0 (its ``finish_rank``): once its manifest lines are written,
    ``unrecorded``, the TIFFs it could not add to the manifest (:func:`manifest_written`), and
    ``placed``, every TIFF it put in place (a movie finished as the run stopped may have no
    result that reached rank 0)."""
    return {"unrecorded": manifest_written(manifest, reporter), "placed": manifest.outputs_given()}


def unrecorded_of(ends: Sequence[Any]) -> list[list[Path]]:
    """The ``unrecorded`` lists of the ranks' :func:`rank_end` values."""
    return [list(end.get("unrecorded", ())) for end in ends if isinstance(end, dict)]


def take_in_finished_as_stopped(stop: WorkStopped, jobs: Sequence[Job], converted: dict[int, MovieResult],
                                manifest: Manifest | None, reporter: MpiReporter) -> None:
    """Rank 0, the run stopped early, once the other ranks have stopped (or it has waited long
    enough): a movie finished just as the run stopped is converted, not being converted; its
    TIFF is in place and in the manifest, so it must be listed in ``movies.star`` and the
    report. Its result came after rank 0 began to stop (:meth:`WorkStopped.late_results`), or
    none came, its rank stopped between the rename and the result: then its rank's
    :func:`rank_end` names it as placed, and its result is made from its manifest line. Such
    movies leave ``stop.working``."""
    for index, result in sorted(stop.late_results().items()):
        if index not in converted:
            converted[index] = result
            reporter.report_result(result)
    placed = {rank: [Path(path) for path in end.get("placed", ())]
              for rank, end in stop.rank_values().items() if isinstance(end, dict)}
    if manifest is not None:
        placed[0] = manifest.outputs_given()
    # A rank converts one movie at a time, and puts each TIFF in place once: it placed the one
    # it was working on if it placed more than rank 0 has results of (a movie converted again
    # by --watch has placed its TIFF before, for its earlier result).
    results_of = Counter(result.details.get("mpi_rank") for result in converted.values()
                         if result.status == "converted")
    for index, rank in sorted(stop.working.items()):
        job = jobs[index]
        outputs = placed.get(rank, [])
        if (index not in converted and len(outputs) > results_of[rank] and outputs
                and outputs[-1] == Path(job.destination)):
            converted[index] = finished_without_result(job, rank, manifest)
            reporter.report_result(converted[index])
    for index in converted:
        stop.working.pop(index, None)


def finished_without_result(job: Job, rank: int, manifest: Manifest | None) -> MovieResult:
    """The result of a movie whose TIFF its rank put in place just before it was stopped, which
    therefore sent no result: its figures from its manifest line (when there is one)."""
    result = MovieResult(job.source, job.destination, "converted")
    entry = None
    if manifest is not None:
        with contextlib.suppress(CryotiffError):
            entry = manifest.recorded(job.destination)
    if entry is not None:
        result.n_pages, result.output_bytes, result.dtype = entry.pages, entry.output_bytes, entry.sample_type
        result.input_bytes = entry.source_bytes
    result.notes.append(f"{job.destination} was finished as the run stopped (MPI rank {rank} was stopped before it "
                        "reported it)")
    result.details["mpi_rank"] = rank
    return result


def mark_not_in_manifest(results: Sequence[MovieResult], unrecorded: Sequence[Sequence[Path]]) -> None:
    """Rank 0: mark the converted movies whose TIFF some rank could not add to the manifest
    (``unrecorded``: each rank's list), as ``convert-to-tiff`` does: the exit status is then 1."""
    from .jobs import NOT_IN_MANIFEST

    missing = {Path(path) for part in unrecorded for path in (part or ())}
    for result in results:
        if result.status == "converted" and result.destination is not None and Path(result.destination) in missing:
            result.details[NOT_IN_MANIFEST] = True


def stopping_ends_the_job(comm: Any, stop: WorkStopped, status: int, manifest: Manifest | None,
                          reporter: MpiReporter) -> None:
    """Rank 0, the run stopped early and what finished reported: end the job with ``status``
    once this rank's manifest lines are written and the other ranks have said they may be
    ended (as ``convert-to-tiff`` waits for its manifest lines before it exits: a TIFF left out
    of the manifest stays out, since ``--only_do_unfinished`` skips it)."""
    if manifest is not None:
        finish_interrupted(lambda: manifest_written(manifest, reporter))
    stop.wait_for_the_other_ranks()
    abort(comm, status, "")


# --------------------------------------------------------------------------- conversion


def run_conversion(
    comm: Any,
    inputs: Sequence[str],
    options: ConvertOptions,
    reporter: MpiReporter,
    report_path: Path | None = None,
) -> int:
    """Plan on rank 0, skip finished movies, convert the rest on every rank; rank 0 reports."""
    started = time.perf_counter()
    started_ns = time.time_ns()  # a TIFF made by this run is newer (stopped_run)
    rank = comm.rank
    checked = rank_zero_outputs(rank, report_path)
    try:
        jobs, failures = plan_on_rank_zero(comm, inputs, options, checked)
        context = prepare_everywhere(comm, jobs, options, reporter, checked.output_dir)
    except RunStopped as stop:
        return stop.status

    if rank == 0:  # before any movie is handed out; a live run's temporary files hold a lock
        stale = StaleTemporaries()
        for job in jobs:
            for line in stale.clean(job.destination):
                reporter.message(line)
    checks = find_finished(comm, jobs, options, context) if options.only_do_unfinished else {}
    finished = {index for index, check in checks.items() if check.finished}
    skipped = {index: skipped_result(jobs[index], checks[index]) for index in sorted(finished)}
    if rank == 0:
        reporter.start_run([failure.source for failure in failures] + [job.source for job in jobs])
        for failure in failures:
            reporter.report_result(failure)
        for result in skipped.values():
            reporter.report_result(result)
        for index in sorted(set(checks) - finished):
            reporter.message(converting_again(checks[index]))
    order = largest_first(jobs, [index for index in range(len(jobs)) if index not in finished])

    position = {index: place for place, index in enumerate(order, start=1)}
    host = processor_name()
    executor = responsive_executor(options.threads)
    converted: dict[int, MovieResult] = {}

    def results_so_far() -> list[MovieResult]:
        by_index = {**skipped, **dict(converted)}  # dict(): a copy made at once (the service thread adds to it)
        return failures + [by_index[index] for index in range(len(jobs)) if index in by_index]

    reported = error_report_on_rank_zero(rank, report_path, results_so_far, options, inputs, checked)

    def work(index: int, data: Any = None) -> MovieResult:
        job = jobs[index]
        reporter.movie_started(job, position[index], len(order))
        return converted_here(job, rank, host, lambda: run_job(job, options, executor, reporter, context))

    def collect(worker: int, index: int, result: MovieResult) -> None:
        converted[index] = result
        reporter.report_result(result)

    try:
        ends = share_work(comm, order, work, collect, describe=lambda index: str(jobs[index].source),
                          finish_rank=lambda: rank_end(context.manifest, reporter),
                          outputs=[(job.source, job.destination) for job in jobs])
    except WorkStopped as stop:
        # Quickly: after Ctrl-C on mpirun, Open MPI kills the ranks about 0.2 s after SIGTERM.
        executor.shutdown(wait=False, cancel_futures=True)
        stop.wait_for_the_other_ranks()
        take_in_finished_as_stopped(stop, jobs, converted, context.manifest, reporter)
        by_index = {**skipped, **converted}
        results = failures + [by_index[index] for index in range(len(jobs)) if index in by_index]
        mark_not_in_manifest(results, unrecorded_of(stop.rank_values().values()))
        interruption = stopped_run(stop, jobs, len(jobs) + len(failures), len(results), started_ns=started_ns)
        status = finish_interrupted(lambda: report_run(inputs, results, options, reporter,
                                                       time.perf_counter() - started, report_path, comm.size,
                                                       interruption, checked))
        stopping_ends_the_job(comm, stop, status, context.manifest, reporter)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    unrecorded = unrecorded_of(ends)
    with interrupts_held():  # a signal now would end the job before this rank's last lines: it waits for them
        unrecorded.append(manifest_written(context.manifest, reporter))  # this rank's TIFFs are all in the manifest

    status = EXIT_OK
    if rank == 0:
        by_index = {**skipped, **converted}
        results = failures + [by_index[index] for index in range(len(jobs))]
        mark_not_in_manifest(results, unrecorded)
        status = report_run(inputs, results, options, reporter, time.perf_counter() - started, report_path, comm.size,
                            checked=checked)
    reported()  # an error from here on leaves the report as it is
    return broadcast_status(comm, status)


def rank_zero_outputs(rank: int, report_path: Path | None) -> CheckedOutputs:
    """Where rank 0's own files go (movies.star, the ``--report``, gain-reference.mrc), as it
    checks them when the run starts (the ``--report``'s directory; ``--o`` is added when rank 0
    makes it), as ``convert-to-tiff`` does (:class:`cryotiff.cli.CheckedOutputs`); nothing on
    the other ranks, which write none of them."""
    from .report import checked_report_directory

    if rank != 0 or report_path is None:
        return CheckedOutputs()
    return CheckedOutputs(report_dir=checked_report_directory(report_path))


def run_watch(
    comm: Any,
    inputs: Sequence[str],
    options: ConvertOptions,
    reporter: MpiReporter,
    report_path: Path | None,
    watch: WatchOptions,
) -> int:
    """``--watch`` over every rank: a thread of rank 0 looks at the inputs (:mod:`cryotiff.watch`)
    and queues each movie once it is complete; the ranks take them as for a fixed list (rank 0
    converts too); rank 0 rewrites ``movies.star`` and the report after every movie. Ends when
    the watch ends (``--watch_timeout``) and every queued movie is done."""
    from .watch import ContextKeeper, MovieWatch, latest_results, named_nothing_warnings, ready_sources

    started = time.perf_counter()
    started_ns = time.time_ns()  # a TIFF made by this run is newer (stopped_run)
    rank = comm.rank
    error = None
    checked = rank_zero_outputs(rank, report_path)
    if rank == 0:
        try:
            checked.output_dir = make_output_dir(options)
        except CryotiffError as exc:
            error = (str(exc), EXIT_USAGE)
    try:
        agree(comm, error)
    except RunStopped as stop:
        return stop.status
    host = processor_name()
    keeper = ContextKeeper(options, reporter, write_files=rank == 0, output_directory=checked.output_dir)
    # rank 0's, for the whole watch: a list that cannot be written is warned about once per spell
    records = WatchRecords(inputs, options, reporter, report_path, checked) if rank == 0 else None
    stale = StaleTemporaries()
    executor = responsive_executor(options.threads)
    jobs: list[Job] = []  # rank 0: every movie found, by index
    found_failures: list[MovieResult] = []  # rank 0: movies that cannot be planned
    converted: dict[int, MovieResult] = {}
    queue = WorkQueue(complete=False) if rank == 0 else None
    stop_watching = threading.Event()
    record_lock = threading.Lock()

    def in_progress(source: Path) -> bool:
        """A movie handed out whose result has not come back (it changed meanwhile: it is handed
        out again only after that)."""
        with record_lock:
            return any(job.source == source and index not in converted for index, job in enumerate(jobs))

    finder = MovieWatch(inputs, options, watch, in_progress=in_progress) if rank == 0 else None

    def results_so_far() -> list[MovieResult]:
        """One result per movie (one converted again, since it changed, keeps its last)."""
        done = dict(converted)  # a copy made at once: the service thread adds to it
        return latest_results(list(found_failures) + [done[index] for index in sorted(done)])

    reported = error_report_on_rank_zero(rank, report_path, results_so_far, options, inputs, checked)

    def record() -> None:
        with record_lock:
            records(results_so_far())

    def look_until_quiet() -> None:
        """Rank 0's watcher thread (no MPI calls)."""
        try:
            last_activity, idle_said = time.monotonic(), False
            while not stop_watching.is_set():
                found = finder.look()
                if found.ready or found.failures:  # counted once ready (see watch.ready_sources)
                    with reporter._lock:
                        reporter.more_movies(ready_sources(found))
                for note in found.notes:
                    reporter.message(note)
                for failure in found.failures:
                    with record_lock:
                        found_failures.append(failure)
                    reporter.report_result(failure)
                if found.failures:
                    record()
                if found.ready:
                    # Here, so that rank 0 writes gain-reference.mrc and says what it loaded,
                    # whichever rank converts the first movie that needs the gain.
                    try:
                        keeper.for_jobs(found.ready)
                    except CryotiffError as exc:
                        abort(comm, EXIT_FAILED, f"ERROR: {exc}")
                for job in found.ready:
                    jobs.append(job)
                queue.add(range(len(jobs) - len(found.ready), len(jobs)))
                if found.ready or queue.busy():
                    idle_said = False
                if found.changed or found.ready or found.failures or queue.busy():
                    last_activity = time.monotonic()
                elif watch.timeout_seconds is not None and time.monotonic() - last_activity >= watch.timeout_seconds:
                    break
                if not queue.busy() and not idle_said:
                    reporter.message("Watching for new movies" + (
                        f"; stopping after {watch.timeout_seconds:g} s without any"
                        if watch.timeout_seconds is not None else "; Ctrl-C stops"))
                    idle_said = True
                stop_watching.wait(watch.poll_seconds)
        except BaseException as exc:
            details = traceback.format_exc()
            report_the_error(f"MPI rank 0: unexpected error while watching the inputs: {type(exc).__name__}: {exc}")
            abort(comm, EXIT_FAILED, f"MPI rank 0: unexpected error while watching the inputs; stopping every "
                                     f"rank.\n{details}")
        finally:
            queue.finish()

    def work(index: int, job: Job) -> MovieResult:
        def convert() -> MovieResult:
            try:
                context = keeper.for_jobs([job])  # rank 0 has prepared it already (the watcher)
            except CryotiffError as exc:
                return MovieResult(job.source, job.destination, "failed", str(exc))
            return handle_job(job, index + 1, index + 1, options, executor, reporter, context, stale)

        return converted_here(job, rank, host, convert)

    def collect(worker: int, index: int, result: MovieResult) -> None:
        converted[index] = result
        reporter.report_result(result)
        record()

    watcher = None
    if rank == 0:
        reporter.start_run([])
        watcher = threading.Thread(target=look_until_quiet, name="cryotiff-watch", daemon=True)
        watcher.start()
    try:
        ends = share_work(comm, [], work, collect, describe=lambda index: str(jobs[index].source), queue=queue,
                          data_of=lambda index: jobs[index], finish_rank=lambda: rank_end(keeper.manifest, reporter))
    except WorkStopped as stop:
        stop_watching.set()
        executor.shutdown(wait=False, cancel_futures=True)
        stop.wait_for_the_other_ranks()
        with record_lock:
            take_in_finished_as_stopped(stop, jobs, converted, keeper.manifest, reporter)
        results = results_so_far()
        mark_not_in_manifest(results, unrecorded_of(stop.rank_values().values()))
        n_movies = len({job.source for job in [*jobs, *finder.waiting()]}) + len(found_failures)
        interruption = stopped_run(stop, jobs, n_movies, len(results), started_ns=started_ns)
        status = finish_interrupted(lambda: report_run(inputs, results, options, reporter,
                                                       time.perf_counter() - started, report_path, comm.size,
                                                       interruption, checked, records))
        stopping_ends_the_job(comm, stop, status, keeper.manifest, reporter)
    finally:
        stop_watching.set()
        executor.shutdown(wait=True, cancel_futures=True)
    unrecorded = unrecorded_of(ends)
    with interrupts_held():  # a signal now would end the job before this rank's last lines: it waits for them
        unrecorded.append(manifest_written(keeper.manifest, reporter))  # this rank's TIFFs are all in the manifest

    status = EXIT_OK
    if rank == 0:
        watcher.join()
        unfinished = finder.unfinished_results()
        for result in unfinished:
            reporter.report_result(result)
        for text in named_nothing_warnings(finder.search):
            reporter.warning(text)
        results = latest_results(results_so_far() + unfinished)
        mark_not_in_manifest(results, unrecorded)
        status = report_run(inputs, results, options, reporter, time.perf_counter() - started, report_path, comm.size,
                            checked=checked, watch_records=records)
    reported()  # an error from here on leaves the report as it is
    return broadcast_status(comm, status)


def run_verify(comm: Any, inputs: Sequence[str] | None, options: ConvertOptions, reporter: MpiReporter) -> int:
    """``--verify_only`` over every rank: rank 0 lists the outputs (from the inputs, or from the
    manifest of ``--o``), the ranks check them one movie at a time, rank 0 prints each verdict
    as it comes and the summary (the verdicts are those of ``convert-to-tiff --verify_only``)."""
    from .manifest import MANIFEST_NAME, read_manifest
    from .verify import GainContexts, unlisted_outputs, verify_with_manifest, verify_with_original

    started = time.perf_counter()
    planned, error = None, None
    if comm.rank == 0:
        try:
            manifest = read_manifest(options.output_dir)
            if inputs:
                jobs, failures = plan(inputs, options)
                entries = [manifest.get(manifest_key(job.destination, options.output_dir)) for job in jobs]
                planned = (jobs, entries, [unplanned_verdict(failure) for failure in failures])
            elif manifest or (options.output_dir / MANIFEST_NAME).exists():  # no readable line: TIFFs unchecked
                planned = (None, list(manifest.values()), unlisted_outputs(options.output_dir, list(manifest.values())))
            else:
                raise OptionError(f"{options.output_dir / MANIFEST_NAME}: no manifest to check the outputs "
                                  "against; give the originals with --i")
        except CryotiffError as exc:
            error = (str(exc), _error_status(exc))
    planned = pkl5_bcast(comm, planned)
    try:
        agree(comm, error)
    except RunStopped as stop:
        return stop.status
    jobs, entries, unplanned = planned
    verdicts: dict[int, Any] = {}
    contexts = GainContexts()
    if comm.rank == 0:
        for verdict in unplanned:
            reporter.message(verdict.line())

    with thread_pool(options.threads) as executor:
        def work(index: int, data: Any = None):
            if jobs is not None:
                return verify_with_original(jobs[index], options, executor, contexts, entries[index])
            return verify_with_manifest(options.output_dir, entries[index], executor, options.threads, contexts,
                                        options.ignore_error)

        def collect(worker: int, index: int, verdict: Any) -> None:
            verdicts[index] = verdict
            reporter.message(verdict.line())

        share_work(comm, range(len(entries)), work, collect,
                   describe=lambda index: str(jobs[index].source if jobs is not None else entries[index].output))
    status = EXIT_OK
    if comm.rank == 0:
        ordered = unplanned + [verdicts[index] for index in range(len(entries))]
        status = finish_verify(ordered, time.perf_counter() - started, reporter, against_originals=jobs is not None,
                               output_dir=options.output_dir)
    return broadcast_status(comm, status)


def pkl5_bcast(comm: Any, value: Any) -> Any:
    """Rank 0's ``value`` on every rank, as a pickle-5 message (no 2 GiB limit)."""
    from mpi4py.util import pkl5

    return pkl5.Intracomm(comm).bcast(value, root=0)


#: How long rank 0, stopping, waits for the other ranks to remove their partial files before it
#: says which may remain. An interrupted rank removes its file within milliseconds; mpirun kills
#: every rank about 0.25 s after its SIGTERM (measured with Open MPI 5), and rank 0 must have
#: printed what it has to say by then.
PARTIAL_FILES_WAIT_SECONDS = 0.1


def killed_deadline() -> float:
    """When Open MPI is killing the job (:func:`being_killed`): until when rank 0 waits, in all,
    for the other ranks to stop and for their partial files to go, :data:`PARTIAL_FILES_WAIT_SECONDS`
    after the signal. One deadline for both waits, counted from the signal rather than from when
    rank 0's main thread begins to wait (which a loaded machine delays): with a wait of its own
    each, rank 0 spent 0.2 s of the 0.25 s before SIGKILL waiting, and on a loaded machine SIGKILL
    came before its line about the partial file of the rank that died."""
    return _SIGNALS.get("interrupted", time.monotonic()) + PARTIAL_FILES_WAIT_SECONDS


def stopped_run(stop: WorkStopped, jobs: Sequence[Job], n_movies: int, n_done: int,
                wait_seconds: float = PARTIAL_FILES_WAIT_SECONDS, started_ns: int | None = None) -> Interruption:
    """What rank 0 reports when the run stopped early: the movies being converted, apart from
    those whose partial files were not removed: of ranks that died, and of any other rank whose
    partial file is still there after ``wait_seconds``. First it waits for the other ranks to
    stop (:meth:`WorkStopped.wait_for_the_other_ranks`: a rank that got no signal itself stops
    after the page it is making). A rank killed by SIGKILL looks to rank 0 like an interrupt
    (mpirun's SIGTERM often arrives before MPI reports the dead rank), so only the file system
    can tell whether its partial file was removed. A movie whose TIFF is there, made since
    ``started_ns`` (``time.time_ns()`` at the start of the run), and whose result did not come
    (:func:`take_in_finished_as_stopped` found none: its rank did not say :data:`STOPPED` in
    time, or was stopped between the rename and its manifest line) is said to be unlisted."""
    from .io.atomic import temporaries_of

    stop.wait_for_the_other_ranks()
    deadline = time.monotonic() + wait_seconds
    if being_killed():  # SIGKILL follows: what is left of the one wait (killed_deadline)
        deadline = min(deadline, killed_deadline())

    def removed_by_its_rank(index: int, rank: int) -> bool:
        if rank in stop.dead_ranks:
            return False
        if rank == 0:  # this process: its writer removed the file before WorkStopped was raised
            return True
        while temporaries_of(jobs[index].destination):
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)
        return True

    def finished_here(index: int) -> bool:
        try:
            status = os.stat(jobs[index].destination, follow_symlinks=False)
        except OSError:
            return False
        return started_ns is not None and status.st_mtime_ns >= started_ns and not temporaries_of(jobs[index].destination)

    working = sorted(stop.working.items())
    unlisted_flags = {index: finished_here(index) for index, _ in working}
    removed_flags = {index: not unlisted_flags[index] and removed_by_its_rank(index, rank) for index, rank in working}
    removed = [jobs[index] for index, _ in working if removed_flags[index]]
    unlisted = [jobs[index] for index, _ in working if unlisted_flags[index]]
    left_behind = [jobs[index] for index, _ in working if not removed_flags[index] and not unlisted_flags[index]]
    n_left = max(n_movies - n_done - len(unlisted), 0)
    if stop.reason:
        return Interruption("error", EXIT_FAILED, removed, n_left, stop.reason, left_behind, reason_printed=True,
                            urgent=True, unlisted=unlisted)
    return Interruption("interrupted", EXIT_INTERRUPTED, removed, n_left, left_behind=left_behind, urgent=True,
                        unlisted=unlisted)


def report_run(
    inputs: Sequence[str],
    results: list[MovieResult],
    options: ConvertOptions,
    reporter: MpiReporter,
    wall_seconds: float,
    report_path: Path | None,
    n_ranks: int,
    interruption: Interruption | None = None,
    checked: CheckedOutputs | None = None,
    watch_records: WatchRecords | None = None,
) -> int:
    """Rank 0, after the run (also one that stopped early): ``movies.star``, the summary, the
    work per rank, the ``--report`` (as ``convert-to-tiff`` does; into their directories as
    ``checked``; ``watch_records``: a ``--watch``'s). Returns the exit status."""
    from .cli import finish_run

    return finish_run(inputs, results, options, reporter, wall_seconds, report_path,
                      extra_lines=[format_rank_line(results, n_ranks)], interruption=interruption, checked=checked,
                      watch_records=watch_records)


def format_rank_line(results: Sequence[MovieResult], n_ranks: int) -> str:
    """``Movies per MPI rank: 0: 3 (1.20 GB), 1: 2 (0.90 GB)``: how the work was shared (movies
    handled, converted or failed, and their input size)."""
    movies = [0] * n_ranks
    nbytes = [0] * n_ranks
    for result in results:
        rank = result.details.get("mpi_rank")
        if isinstance(rank, int) and 0 <= rank < n_ranks:
            movies[rank] += 1
            nbytes[rank] += result.input_bytes
    parts = [f"{rank}: {movies[rank]} ({format_bytes(nbytes[rank])})" for rank in range(n_ranks)]
    return "Movies per MPI rank: " + ", ".join(parts)


# --------------------------------------------------------------------------- gain estimation


def first_float_shape(jobs: Sequence[Job]) -> tuple[int, int] | None:
    """Frame size of the first readable float movie: the size a serial ``--estimate_gain``
    without ``--gain`` fixes with its first movie (later movies of another size fail)."""
    from .convert import movie_kind, open_movie

    for job in jobs:
        try:
            if movie_kind(job.source) == "eer":
                continue
            with open_movie(job.source) as movie:
                if movie.info.dtype.kind == "f":
                    return tuple(movie.info.shape_yx)
        except CryotiffError:
            continue  # reported when the movie is estimated
    return None


def starting_state(comm: Any, jobs: Sequence[Job], options: ConvertOptions, reporter: MpiReporter):
    """The state every movie's estimate starts from, the same on every rank: the ``--gain``
    files (resumed; read by rank 0 and broadcast, since rank 0 may soon overwrite them when
    they are the ``<o>/gain_estimate.bin`` of an earlier run), else a fresh state of the first
    float movie's size; None when there is no float movie."""
    from mpi4py.util import pkl5

    from .gain import GainEstimate, find_reliability_path, read_message, replaced_estimate_warning, resume_warning

    start, error = None, None
    if comm.rank == 0:
        try:
            if options.gain is not None:
                start = GainEstimate.load(options.gain)
                reporter.message(read_message(options.gain))
                reporter.message(read_message(find_reliability_path(options.gain)) + "\n")
                reporter.warning(resume_warning(options.gain))
            else:
                shape = first_float_shape(jobs)
                start = GainEstimate.new(shape) if shape is not None else None
            replacing = replaced_estimate_warning(options.output_dir, options.gain)
            if replacing:
                reporter.warning(replacing)
        except CryotiffError as exc:
            error = (str(exc), _error_status(exc))
    agree(comm, error)
    return pkl5.Intracomm(comm).bcast(start, root=0)


def run_estimation(
    comm: Any, inputs: Sequence[str], options: ConvertOptions, reporter: MpiReporter, report_path: Path | None = None
) -> int:
    """``--estimate_gain`` over every rank (see the module docstring); writes no TIFF."""
    from .gain import merge, updated_message

    started = time.perf_counter()
    rank = comm.rank
    checked = rank_zero_outputs(rank, report_path)
    try:
        jobs, failures = plan_on_rank_zero(comm, inputs, options, checked)
        start = starting_state(comm, jobs, options, reporter)
    except RunStopped as stop:
        return stop.status
    if rank == 0:
        reporter.start_run([failure.source for failure in failures] + [job.source for job in jobs])
        for failure in failures:
            reporter.report_result(failure)
    order = largest_first(jobs, range(len(jobs)))
    host = processor_name()
    executor = make_executor(options.threads)

    def work(index: int, data: Any = None) -> tuple[MovieResult, Any]:
        job = jobs[index]
        reporter.message(f"Processing {job.source}")
        own = None
        if start is not None:
            own = start.copy()
            own.start_merge_tracking()  # counts what this movie adds to the common start
        try:
            own, result = estimate_movie(job.source, own, options, executor, reporter)
        except Exception as exc:
            result = unexpected_failure(job, rank, exc, "estimating the gain of")
        result.details["mpi_rank"] = rank
        result.details["mpi_host"] = host
        usable = result.status == "converted" and own is not None and own.tracks_merge
        return result, own if usable else None

    results: dict[int, MovieResult] = {}
    merged = {"state": None, "unsaved": 0, "error": None}
    reported = error_report_on_rank_zero(
        rank, report_path, lambda: failures + [result for _, result in sorted(dict(results).items())],
        options, inputs, checked)

    def save() -> None:
        """Rank 0: write the merged state (atomically, as the serial run does)."""
        try:
            merged["state"].save(options.output_dir)
            reporter.message(updated_message(options.output_dir) + "\n")
        except CryotiffError as exc:
            merged["error"] = str(exc)
            reporter.warning(f"ERROR: {exc}")
        merged["unsaved"] = 0

    def collect(worker: int, index: int, payload: tuple[MovieResult, Any]) -> None:
        result, estimate = payload
        results[index] = result
        reporter.report_result(result)
        if estimate is None:
            return
        merged["state"] = estimate if merged["state"] is None else merge(merged["state"], estimate)
        merged["unsaved"] += 1
        if merged["unsaved"] >= comm.size:  # a round: one movie per rank
            save()

    try:
        share_work(comm, order, work, collect, describe=lambda index: str(jobs[index].source))
    except WorkStopped as stop:
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        done = failures + [results[index] for index in range(len(jobs)) if index in results]
        lines = [stop.reason] if stop.reason else []
        lines.append(f"{'Stopped' if stop.reason else 'Interrupted'}: the estimate of the movies that finished is "
                     f"in {options.output_dir} (gain_estimate.bin); to go on, run --estimate_gain on the other "
                     f"movies with --gain {options.output_dir / 'gain_estimate.bin'}.")

        def finish() -> int:
            if merged["unsaved"]:
                save()
            status = finish_estimation(inputs, done, options, reporter, time.perf_counter() - started, report_path,
                                       [format_rank_line(done, comm.size)], merged["error"], interrupted_lines=lines,
                                       checked=checked)
            return EXIT_FAILED if stop.reason else status

        abort(comm, finish_interrupted(finish), "")
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    status = EXIT_OK
    if rank == 0:
        if merged["unsaved"]:
            save()
        all_results = failures + [results[index] for index in range(len(jobs))]
        lines = [format_rank_line(all_results, comm.size),
                 *estimate_lines(inputs, options, merged["state"], program="convert-to-tiff-mpi")]
        status = finish_estimation(inputs, all_results, options, reporter, time.perf_counter() - started,
                                   report_path, lines, merged["error"], checked=checked)
    reported()  # an error from here on leaves the report as it is
    return broadcast_status(comm, status)


if __name__ == "__main__":
    sys.exit(main())
