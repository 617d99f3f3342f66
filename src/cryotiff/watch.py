"""``--watch``: convert the movies of a session while the microscope is still writing them.

After converting what the inputs name now, cryotiff looks at the inputs again every few seconds
(directories and glob patterns expanded again, STAR and list files read again) and converts each
new movie once it is complete:

* its size and modification time have not changed for ``--settle_seconds``: watched on this
  machine's clock, or credited at first sight from the age of its modification time (so the
  clocks of the file server and of this machine must agree to well within that time);
* it opens with cryotiff's own reader, the one that converts it: an MRC file's size matches its
  header, a TIFF or EER file is readable to its last IFD.

A movie that is still growing, or not yet complete, waits; it never counts as a failure while
the watch goes on. So does an input that names nothing yet (an empty directory, a pattern
without matches, a STAR or list file not written yet); one that named nothing during the whole
watch gets a warning at its end. An input that cannot be searched (a directory that became
unreadable, an input directory removed, a mount gone stale) is a failure of the run, reported
once when it is seen at two looks in a row (a STAR file being rewritten in place is not damaged);
the watch goes on and takes the movies there once they can be found again. A STAR or list file
is used only as read whole: a read that ends in the middle of a line, or during which the file
changed, is made again at the next look (:class:`InputSearch`). A movie that no input names any
more before it is converted (a STAR file rewritten without it, a movie removed) is forgotten, not
a failure. Each movie is converted once, unless its size or modification time changes
after it was handed to its conversion: a TIFF written page by page is a complete TIFF after
every page, so a writer that pauses for longer than ``--settle_seconds`` gets it converted with
the pages it had then. Such a movie waits again and is converted again once it is complete (the
TIFF replaced; its result replaces the earlier one). The watch ends after ``--watch_timeout``
seconds in which nothing new appeared and nothing changed, or with Ctrl-C / SIGTERM; movies
still incomplete at its end are failures then, with the reader's reason.

This module finds the movies and decides when each is ready; converting one is
:func:`cryotiff.jobs.handle_job`, the same as without ``--watch``. It never prints: it reports
through the :class:`cryotiff.jobs.Reporter`.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .convert import MOVIE_SUFFIXES, ConvertOptions, MovieResult, RunContext, movie_kind, open_movie
from .errors import CryotiffError
from .inputs import GLOB_CHARACTERS, InputProblem, search_input
from .io import open_regular_stream, open_to_read
from .io.atomic import CheckedDirectory
from .jobs import (
    Job,
    Reporter,
    StaleTemporaries,
    handle_job,
    manifest_waited,
    plan,
    prepare,
    thread_pool,
)
from .manifest import Manifest
from .waking import sleep_waking  # between two looks at the inputs (up to 5 s)

#: Default of ``--settle_seconds``: how long a movie's size and time must stay unchanged.
DEFAULT_SETTLE_SECONDS = 60.0
#: The longest pause between two looks at the inputs.
MAX_POLL_SECONDS = 5.0


@dataclass(frozen=True)
class WatchOptions:
    """``--watch`` and its settings.

    Attributes:
        settle_seconds: ``--settle_seconds``.
        timeout_seconds: ``--watch_timeout`` (None: until Ctrl-C or SIGTERM).
    """

    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    timeout_seconds: float | None = None

    @property
    def poll_seconds(self) -> float:
        """Time between two looks at the inputs: a quarter of the settle time, at most 5 s."""
        return min(max(self.settle_seconds / 4, 0.05), MAX_POLL_SECONDS)


def why_incomplete(path: Path) -> str | None:
    """None if the movie opens with its reader (an MRC file's size matches its header, a TIFF
    or EER file reads to its last IFD) and, for TIFF and EER, every page's data lies inside the
    file; else why not."""
    try:
        with open_movie(path):
            pass
        if movie_kind(path) in ("tiff", "eer"):
            return _data_past_the_end(path)
        return None
    except CryotiffError as exc:
        return str(exc)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"


def _data_past_the_end(path: Path) -> str | None:
    """The first page of a TIFF container whose IFD, tag values or strips reach past the end of
    the file: a file whose IFDs are all there but whose last bytes are still being written."""
    import tifffile

    with open_regular_stream(path) as handle, tifffile.TiffFile(handle) as tif:
        file_nbytes = tif.filehandle.size
        layout = tif.tiff
        for number, page in enumerate(tif.pages, start=1):
            tags = list(page.tags.values())
            ends = [page.offset + layout.tagnosize + len(tags) * layout.tagsize + layout.offsetsize]
            ends += [tag.valueoffset + tag.valuebytecount for tag in tags]
            ends += [offset + count for offset, count in zip(page.dataoffsets, page.databytecounts)]
            if max(ends) > file_nbytes:
                return (f"{path}: page {number} (its IFD, tag values or data) ends at byte {max(ends)}, but the "
                        f"file has {file_nbytes} bytes")
    return None


def _is_gone(directory: str) -> bool:
    """Whether a directory is no longer there (removed, renamed, unmounted), or no longer a
    directory; False when it cannot be told (the search says why)."""
    try:
        return not stat.S_ISDIR(os.stat(directory).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except (OSError, ValueError):
        return False


def _may_name_movies_later(argument: str) -> bool:
    """False for an argument that is not there and whose name is no movie, STAR or list file, nor
    a pattern: a directory not made yet (it names nothing yet, rather than a movie of its name)."""
    return (os.path.lexists(argument) or bool(GLOB_CHARACTERS & set(argument))
            or Path(argument).suffix.lower() in (*MOVIE_SUFFIXES, ".star", ".lst"))


#: The inputs that name their movies inside them (read again at every look).
NAME_FILE_SUFFIXES = (".star", ".lst")


def _name_file_state(path: str) -> tuple[int, int, bool] | None:
    """``(size, modification time in ns, whether its last line is complete)`` of a STAR or list
    file, or None where it is no regular file (the search says why)."""
    try:
        descriptor, status = open_to_read(path)  # a named pipe at the name cannot block the open
    except (OSError, ValueError):
        return None
    try:
        if not stat.S_ISREG(status.st_mode):
            return None
        if status.st_size == 0:
            return (0, status.st_mtime_ns, True)
        last = os.pread(descriptor, 1, status.st_size - 1)
    except OSError:
        return None
    finally:
        os.close(descriptor)
    return (status.st_size, status.st_mtime_ns, last in (b"\n", b"\r"))


class InputSearch:
    """The inputs of a watch, searched again at every look (:func:`cryotiff.inputs.search_input`):
    an input that names nothing yet adds nothing; one that cannot be searched is a problem,
    reported once when seen at two looks in a row; an input directory that is gone is one too
    (rather than a movie of that name).

    A STAR or list file is read while another program may be writing it (RELION, a script): a
    read that ends in an incomplete line, or during which the file's size or modification time
    changed, could hold a movie name cut short, and is not used: the file gives the movies of
    its last complete read (none before the first) and is read again at the next look. A file
    whose last line has no line break is used once it is unchanged since the look before."""

    def __init__(self, inputs: Sequence[str], output_dir: Path):
        self.inputs = list(inputs)
        self.output_dir = output_dir
        self._directories: set[str] = set()  # inputs seen as directories
        self._named_a_movie: set[str] = set()
        self._with_problems: set[str] = set()  # inputs a reported problem was about
        self._seen_last: set[str] = set()  # problems of the last look, by message
        self._reported: set[str] = set()
        self._name_files_seen: dict[str, tuple[int, int, bool] | None] = {}  # state at the last look
        self._complete_reads: dict[str, list[Path]] = {}  # what each STAR or list file gave when read whole

    def _search(self, argument: str) -> tuple[list[Path], list[InputProblem]]:
        """:func:`cryotiff.inputs.search_input`, but for a STAR or list file being written, the
        movies of its last complete read."""
        if Path(argument).suffix not in NAME_FILE_SUFFIXES:
            return search_input(argument, self.output_dir)
        before = _name_file_state(argument)
        found, met = search_input(argument, self.output_dir)
        after = _name_file_state(argument)
        seen_last = self._name_files_seen.get(argument)
        self._name_files_seen[argument] = after
        if before != after or (after is not None and not after[2] and after != seen_last):
            return self._complete_reads.get(argument, []), []
        self._complete_reads[argument] = found
        return found, met

    def look(self) -> tuple[list[str], list[InputProblem]]:
        """The movies the inputs name now, as paths, and the problems to report now."""
        movies: dict[str, None] = {}
        problems: dict[str, tuple[str, InputProblem]] = {}
        for argument in self.inputs:
            if argument in self._directories and _is_gone(argument):
                problem = InputProblem(Path(argument), f"{argument}: the directory is gone (removed, renamed or its "
                                                       "file system unmounted); watching for it to come back")
                problems[problem.message] = (argument, problem)
                continue
            if not _may_name_movies_later(argument):
                continue  # a directory not made yet, not a movie of that name
            found, met = self._search(argument)
            if os.path.isdir(argument):
                self._directories.add(argument)
            if found:
                self._named_a_movie.add(argument)
            movies.update((str(movie), None) for movie in found)
            problems.update((problem.message, (argument, problem)) for problem in met if not problem.names_nothing)
        to_report = []
        for message, (argument, problem) in problems.items():
            if message in self._seen_last and message not in self._reported:
                self._reported.add(message)
                self._with_problems.add(argument)
                to_report.append(problem)
        self._seen_last = set(problems)
        return list(movies), to_report

    def named_nothing(self) -> list[str]:
        """The inputs that named no movie at any look (and had no problem reported)."""
        return [argument for argument in self.inputs
                if argument not in self._named_a_movie and argument not in self._with_problems]


def named_nothing_warnings(search: InputSearch) -> list[str]:
    """At the end of the watch: a warning for each input that named no movie during it."""
    return [f"WARNING: {argument}: named no movie during the whole watch" for argument in search.named_nothing()]


@dataclass
class _Sighting:
    size: int
    mtime_ns: int
    unchanged_since: float  # on the watch's clock


@dataclass
class WatchRound:
    """What one look at the inputs found.

    Attributes:
        ready: new movies that are complete, in input order (also those converted before that
            changed since: see ``again``).
        failures: new movies that cannot be converted at all (two for one output, ...), and
            problems of the inputs (a directory that cannot be searched, ...).
        changed: something appeared or changed (the ``--watch_timeout`` clock starts again).
        notes: one-time remarks for the user (a movie settled but still incomplete).
        again: the sources of ``ready`` that were converted before and changed since (their
            new result replaces the earlier one).
    """

    ready: list[Job] = field(default_factory=list)
    failures: list[MovieResult] = field(default_factory=list)
    changed: bool = False
    notes: list[str] = field(default_factory=list)
    again: list[Path] = field(default_factory=list)


def ready_sources(found: WatchRound) -> list[Path]:
    """The movies of ``found`` that are handled now (ready to convert, or failed at once): what
    the run's progress counts (a movie still being written is counted once it is complete; one
    converted again, once)."""
    return ([job.source for job in found.ready if job.source not in found.again]
            + [failure.source for failure in found.failures])


def latest_results(results: Sequence[MovieResult]) -> list[MovieResult]:
    """One result per movie: a movie converted again (it changed after its first conversion)
    keeps its last result, in the place of its first."""
    latest: dict[tuple[Path, Path | None], MovieResult] = {}
    for result in results:
        latest[(result.source, result.destination)] = result
    return list(latest.values())


class MovieWatch:
    """Finds the new movies of the inputs and tells which are complete (see the module
    docstring). Not thread-safe: one caller looks."""

    def __init__(self, inputs: Sequence[str], options: ConvertOptions, watch: WatchOptions,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 in_progress: Callable[[Path], bool] = lambda source: False):
        """``in_progress(source)``: whether the movie's conversion is still running (a movie
        that changed is handed out again only after it, so that two conversions of one movie
        never race for its TIFF)."""
        self.inputs = list(inputs)
        self.search = InputSearch(inputs, options.output_dir)
        self.options = options
        self.watch = watch
        self.clock = clock
        self.wall_clock = wall_clock
        self.handed_out: set[Path] = set()  # sources given to a conversion (or failed in planning)
        self._waiting: dict[Path, _Sighting] = {}
        self._jobs: dict[Path, Job] = {}
        self._noted: dict[Path, str] = {}  # sources settled but incomplete -> reason
        self.in_progress = in_progress
        self._handed_as: dict[Path, tuple[int, int]] = {}  # source -> (size, mtime_ns) when handed out
        self._converted_before: set[Path] = set()

    def look(self) -> WatchRound:
        """Look at the inputs once."""
        found = WatchRound()
        movies, problems = self.search.look()
        for problem in problems:
            found.failures.append(problem.as_result())
            found.changed = True
        named = {Path(movie) for movie in movies}
        for source in [source for source in self._jobs if source not in self.handed_out and source not in named]:
            # No input names it any more (a STAR file rewritten without it, a name that was cut
            # short, a movie removed or renamed before its conversion): nothing to wait for.
            del self._jobs[source]
            self._waiting.pop(source, None)
        if not movies:
            return found
        jobs, failures = plan(movies, self.options)
        for failure in failures:
            if failure.source not in self.handed_out:
                self.handed_out.add(failure.source)
                found.failures.append(failure)
                found.changed = True
        for job in jobs:
            if job.source in self.handed_out and not self._changed_since_handed_out(job.source, found):
                continue
            if job.source not in self._jobs:
                self._jobs[job.source] = job
            if self._is_ready(job.source, found):
                self.handed_out.add(job.source)
                sighting = self._waiting.pop(job.source)
                self._handed_as[job.source] = (sighting.size, sighting.mtime_ns)
                self._noted.pop(job.source, None)
                found.ready.append(job)
                if job.source in self._converted_before:
                    found.again.append(job.source)
        return found

    def _changed_since_handed_out(self, source: Path, found: WatchRound) -> bool:
        """Whether a movie handed out to its conversion has changed since (and that conversion is
        over): it then waits again, its settle time starting now."""
        handed_as = self._handed_as.get(source)
        try:
            status = os.stat(source)
        except OSError:
            return False  # removed after its conversion: nothing to convert again
        now_as = (status.st_size, status.st_mtime_ns)
        if handed_as is None or now_as == handed_as or self.in_progress(source):
            return False
        self.handed_out.discard(source)
        del self._handed_as[source]
        self._converted_before.add(source)
        self._waiting[source] = _Sighting(status.st_size, status.st_mtime_ns, self.clock())
        found.changed = True
        found.notes.append(f"{source}: changed after its conversion ({handed_as[0]} bytes then, {status.st_size} "
                           "now); converting it again once it is complete")
        return True

    def _is_ready(self, source: Path, found: WatchRound) -> bool:
        try:
            status = os.stat(source)
        except OSError:
            return False  # named in a STAR or list file, not there yet
        now = self.clock()
        sighting = self._waiting.get(source)
        if sighting is None or (sighting.size, sighting.mtime_ns) != (status.st_size, status.st_mtime_ns):
            if sighting is None:  # credit the time it has been unchanged already
                age = max(self.wall_clock() - status.st_mtime_ns / 1e9, 0.0)
                unchanged_since = now - age
            else:
                unchanged_since = now
            self._waiting[source] = _Sighting(status.st_size, status.st_mtime_ns, unchanged_since)
            found.changed = True
            if sighting is not None:
                self._noted.pop(source, None)  # growing again: say it again if it stops incomplete
        if now - self._waiting[source].unchanged_since < self.watch.settle_seconds:
            return False
        reason = why_incomplete(source)
        if reason is None:
            return True
        if source not in self._noted:
            self._noted[source] = reason
            found.notes.append(f"{source}: unchanged for {self.watch.settle_seconds:g} s but not complete; "
                               f"waiting for it ({reason})")
        return False

    def waiting(self) -> list[Job]:
        """The movies seen but not converted yet."""
        return [job for source, job in self._jobs.items() if source not in self.handed_out]

    def unfinished_results(self) -> list[MovieResult]:
        """At the end of the watch: a failed result for every movie that never became complete."""
        results = []
        for job in self.waiting():
            reason = why_incomplete(job.source) if job.source.exists() else f"{job.source}: no such file"
            if reason is None:
                reason = (f"{job.source}: still changing (unchanged for less than "
                          f"{self.watch.settle_seconds:g} s)")
            results.append(MovieResult(job.source, job.destination, "failed",
                                       f"not converted: incomplete when the watch ended: {reason}"))
        return results


class ContextKeeper:
    """The run's gain state (:func:`cryotiff.jobs.prepare`) for movies that arrive over time:
    prepared with the first movies, and again when ``--gain`` is given and nothing is loaded
    yet (the first movies were neither float nor EER movies). Thread-safe."""

    def __init__(self, options: ConvertOptions, reporter: Reporter, write_files: bool = True,
                 output_directory: CheckedDirectory | None = None):
        self.options = options
        self.reporter = reporter
        self.write_files = write_files
        self.output_directory = output_directory  # --o as the run checked it (jobs.prepare)
        self.manifest = Manifest(options.output_dir)  # every context made here adds to it
        self.context: RunContext = RunContext(manifest=self.manifest)
        self._prepared = False
        self._lock = threading.Lock()

    def for_jobs(self, jobs: Sequence[Job]) -> RunContext:
        """The context for ``jobs``, prepared with them if needed.

        Raises:
            CryotiffError: as :func:`cryotiff.jobs.prepare` (the gain cannot be read, ...).
        """
        with self._lock:
            context = self.context
            nothing_loaded = not self._prepared or (
                self.options.gain is not None and context.gain_reference is None and context.eer_gain_reference is None
            )
            if nothing_loaded and jobs:
                self.context = prepare(jobs, self.options, self.reporter, write_files=self.write_files,
                                       output_directory=self.output_directory)
                self.context.manifest = self.manifest
                self._prepared = True
            return self.context


def watch_and_convert(
    inputs: Sequence[str],
    options: ConvertOptions,
    watch: WatchOptions,
    reporter: Reporter,
    on_result: Callable[[list[MovieResult]], None] = lambda results: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] | None = None,
    output_directory: CheckedDirectory | None = None,
) -> list[MovieResult]:
    """Convert what the inputs name now, then each new movie once it is complete (and again
    any that changes after its conversion), until ``watch.timeout_seconds`` pass without
    anything new (or KeyboardInterrupt).

    ``reporter`` gets the usual calls, and ``more_movies(sources)`` (if it has it) when new
    movies are seen; ``on_result(results_so_far)`` is called after every movie (the CLI
    rewrites ``movies.star`` and the report there). Returns every movie's result, including a
    failure for each movie still incomplete at the end; one result per movie.
    ``output_directory``: ``--o`` as the run checked it, where every output goes or none.
    """
    sleep = sleep or sleep_waking
    finder = MovieWatch(inputs, options, watch, clock=clock)
    keeper = ContextKeeper(options, reporter, output_directory=output_directory)
    stale = StaleTemporaries()
    results: list[MovieResult] = []
    announce = getattr(reporter, "more_movies", None)
    last_activity = clock()
    idle_said = False
    with manifest_waited(keeper.manifest, reporter, lambda: results), thread_pool(options.threads) as executor:
        while True:
            found = finder.look()
            # Counted once ready: a movie still being written has no final size yet.
            if announce is not None and (found.ready or found.failures):
                announce(ready_sources(found))
            for note in found.notes:
                reporter.message(note)
            for failure in found.failures:
                results.append(failure)
                reporter.movie_finished(failure)
            context = keeper.for_jobs(found.ready)
            for job in found.ready:
                results.append(handle_job(job, len(results) + 1, len(results) + len(finder.waiting()) + 1,
                                          options, executor, reporter, context, stale))
                results = latest_results(results)
                on_result(results)
                idle_said = False
            if found.failures:
                on_result(results)
            if found.changed or found.ready or found.failures:
                last_activity = clock()
            elif watch.timeout_seconds is not None and clock() - last_activity >= watch.timeout_seconds:
                break
            if not found.ready and not idle_said:
                waiting = len(finder.waiting())
                reporter.message("Watching for new movies" + (f" ({waiting} not complete yet)" if waiting else "")
                                 + (f"; stopping after {watch.timeout_seconds:g} s without any"
                                    if watch.timeout_seconds is not None else "; Ctrl-C stops"))
                idle_said = True
            if not found.ready:
                sleep(watch.poll_seconds)
    unfinished = finder.unfinished_results()
    for result in unfinished:
        reporter.movie_finished(result)
    for text in named_nothing_warnings(finder.search):
        reporter.warning(text)
    return latest_results(results + unfinished)
