"""From inputs to results: the jobs planned from the movies the inputs name
(:mod:`cryotiff.inputs`), skip rules, the per-movie loop and the summary.

The library reports progress through a :class:`Reporter`; it never prints. ``cli.py`` and
``mpi.py`` supply reporters that talk to the terminal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .convert import (
    ConvertOptions,
    EerPages,
    MovieResult,
    PageSource,
    RunContext,
    WiderTypeNeeded,
    convert_movie,
    movie_kind,
    open_movie,
    open_page_source,
    ordered_map,
    output_record,
)
from .errors import CryotiffError, GainError, InputError, OptionError, OutputError
from .inputs import directory_entry, output_path, problem_error, search_inputs
from .io import FrameRecycler
from .io.atomic import CheckedDirectory, remove_if_stale, temporaries_of
from .io.tiff import OutputCheck, check_output
from .manifest import Manifest
from .recorded_options import OutputRecord, gain_identity, mismatch


@dataclass(frozen=True)
class Job:
    """One movie to convert.

    Attributes:
        source: the movie as named in the input (relative to the current directory).
        destination: the TIFF to write inside the output directory.
    """

    source: Path
    destination: Path


class Reporter:
    """Receives progress from the library; the default does nothing."""

    def movie_started(self, job: Job, index: int, total: int) -> None:
        """A movie is about to be converted (``index`` is 1-based)."""

    def page_done(self, job: Job, done: int, total: int) -> None:
        """``done`` of ``total`` pages of the current movie are written."""

    def movie_finished(self, result: MovieResult) -> None:
        """A movie was converted, skipped or failed."""

    def message(self, text: str) -> None:
        """An informational line (stdout in the CLI)."""

    def warning(self, text: str) -> None:
        """A warning line (stderr in the CLI)."""


# --------------------------------------------------------------------------- outputs


def _inodes(path: Path) -> set[tuple[int, int]]:
    """``(device, inode)`` of the entry and of the file it leads to, where they exist."""
    found = set()
    for follow in (False, True):
        try:
            status = os.stat(path, follow_symlinks=follow)
        except (OSError, ValueError):
            continue
        found.add((status.st_dev, status.st_ino))
    return found


class InputFiles:
    """Every input movie of a run, by what it really is: its directory entry (directory symlinks
    resolved), the file it leads to, and their inodes. An output that is any of these would
    destroy an input."""

    def __init__(self, movies: Iterable[Path]):
        self._paths: dict[Path, Path] = {}
        self._inodes: dict[tuple[int, int], Path] = {}
        for movie in movies:
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                self._paths.setdefault(directory_entry(movie), movie)
                self._paths.setdefault(Path(movie).resolve(), movie)
            for inode in _inodes(movie):
                self._inodes.setdefault(inode, movie)

    def input_at(self, destination: Path) -> Path | None:
        """The input that ``destination`` is (or leads to), or None."""
        keys: list[Path] = []
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            keys = [directory_entry(destination), destination.resolve()]
        for key in keys:
            if key in self._paths:
                return self._paths[key]
        for inode in _inodes(destination):
            if inode in self._inodes:
                return self._inodes[inode]
        return None


def _output_keys(destination: Path) -> set[object]:
    """What makes two outputs one: the same directory entry once directory symlinks are
    resolved (``out/b/A -> B``), or the same existing file (a case-insensitive file system)."""
    keys: set[object] = set(_inodes_of_entry(destination))
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        keys.add(directory_entry(destination))
    return keys


def _inodes_of_entry(path: Path) -> set[tuple[int, int]]:
    try:
        status = os.lstat(path)
    except (OSError, ValueError):
        return set()
    return {(status.st_dev, status.st_ino)}


def plan(
    inputs: Sequence[str], options: ConvertOptions, relative_to: Path | None = None
) -> tuple[list[Job], list[MovieResult]]:
    """Expand the inputs and name the outputs.

    ``relative_to``: name outputs after the movie path relative to this directory instead of the
    path as given (the demo uses it; RELION has no such option).

    No output may be an input of the run: judged on the real files (directory symlinks resolved,
    hard links by inode), whatever the order of the inputs. Two movies for one output are judged
    the same way. Directory symlinks inside ``--o`` are followed.

    An argument that names nothing (an empty directory, a pattern without matches) or a
    directory that cannot be searched is a failed result of its own while other arguments give
    movies: the run converts them, and its exit status says that something failed.

    Returns:
        The jobs, and failed results for the problems of the inputs (:class:`cryotiff.inputs.InputProblem`) and
        for movies that cannot be planned (two movies that would be written to the same TIFF;
        an output that would replace an input of the run; a name that is no movie file name,
        such as ``.``).

    Raises:
        InputError: no argument gives any movie (the problems' messages).
    """
    movies, problems = search_inputs(inputs, options.output_dir)
    if problems and not movies:
        raise problem_error(problems)
    inputs_of_run = InputFiles(movies)
    jobs: list[Job] = []
    failures: list[MovieResult] = [problem.as_result() for problem in problems]
    claimed: dict[object, Path] = {}
    for movie in movies:
        named = movie.relative_to(relative_to) if relative_to is not None else movie
        try:
            destination = output_path(named, options.output_dir)
        except InputError as exc:
            failures.append(MovieResult(movie, None, "failed", str(exc)))
            continue
        keys = _output_keys(destination)
        earlier = next((claimed[key] for key in keys if key in claimed), None)
        if earlier is not None:
            failures.append(
                MovieResult(movie, destination, "failed",
                            f"{movie}: would be written to {destination}, as {earlier} already is")
            )
            continue
        overwritten = inputs_of_run.input_at(destination)
        if overwritten is not None:
            what = ("the output would overwrite the input" if overwritten == movie
                    else f"its output {destination} is an input of this run ({overwritten})")
            failures.append(MovieResult(movie, destination, "failed", f"{movie}: {what}; choose another --o"))
            continue
        for key in keys:
            claimed[key] = movie
        jobs.append(Job(movie, destination))
    return jobs, failures


@dataclass(frozen=True)
class FinishedCheck:
    """The ``--only_do_unfinished`` verdict on one movie's existing output.

    Attributes:
        finished: the output is complete and made with this run's options: skip the movie.
        reason: when not finished but an output exists, why it is converted again
            (``out/x.tif: incomplete (...)``); "" otherwise.
        notes: lines to show with the skipped movie (an output without a record, one that lacks
            damaged raw frames).
        warnings: warnings to give again with the skipped movie (RELION's line for each
            damaged raw EER frame its output leaves out, as its conversion gave).
        damaged_eer_frames: how many damaged raw EER frames the output leaves out (counted in
            the run's summary and exit status as at its conversion).
    """

    finished: bool
    reason: str = ""
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    damaged_eer_frames: int = 0


#: Said of an output that carries no record of the options that made it.
NO_RECORD = "carries no record of the options that made it (written by RELION or an older cryotiff)"


def check_finished(job: Job, options: ConvertOptions, context: RunContext | None = None) -> FinishedCheck:
    """The ``--only_do_unfinished`` test (RELION only tests that the ``.tif`` exists).

    Finished means: the ``.tif`` is complete (:func:`cryotiff.io.tiff.check_output`: the page
    count, frame size and sample type this movie gives with these options, every strip inside
    the file, the first and last pages decode) and its record (:mod:`cryotiff.recorded_options`)
    says it was made from this input with the options that change its pixels as in this run, and
    its last and first pages equal those the movie gives now (:func:`_differing_page`: the record
    names the input only by file name and size, which a movie replaced by another of the same
    shape keeps). An output
    without a record counts as finished only when no option changes the movie's pixels
    (integer MRC or TIFF); EER and float movies are converted again. An EER output also
    needs its manifest line, which says which damaged raw frames its pages leave out
    (:func:`_damaged_frames_check`). A temporary file never counts.
    """
    if not os.path.lexists(job.destination):
        return FinishedCheck(False)
    if job.destination.is_symlink():  # its target can change, or go with the originals
        try:
            target = os.readlink(job.destination)
        except OSError:
            target = "?"
        return FinishedCheck(False, f"{job.destination}: is a symbolic link to {target}, not a file this program wrote")
    try:
        source = open_page_source(job.source, options, context)
    except (CryotiffError, OSError):
        return FinishedCheck(False)  # the input is broken: let the conversion report it
    try:
        n_pages, shape_yx, dtypes = source.n_pages, source.shape_yx, source.possible_dtypes()
        expected = output_record(source)
        found = check_output(job.destination, n_pages, shape_yx, dtypes)
        record = OutputRecord.from_description(found.description)
        why = mismatch(record, expected) if record is not None else None
        if why is not None:  # the more telling reason, where a file is also of another size
            return FinishedCheck(False, f"{job.destination}: {why}")
        if found.problem is not None:
            return FinishedCheck(False, f"{job.destination}: {found.problem}")
        if record is None and expected.made_with:
            options_that_matter = ", ".join(f"--{name}" for name in expected.made_with)
            return FinishedCheck(False, f"{job.destination}: {NO_RECORD}, and the pixels of {job.source} depend on "
                                        f"{options_that_matter}")
        differing = _differing_page(source, found)
        if differing is not None:
            return FinishedCheck(False, f"{job.destination}: its {differing} page differs from page "
                                        f"{n_pages if differing == 'last' else 1} of {job.source} (made from another "
                                        "movie of the same name and size?)")
        hole = _zero_block_problem(job, source, found)
        if hole is not None:
            return FinishedCheck(False, hole)
        if record is not None:
            unrecorded = _manifest_line_problem(job, source, found, options, context)
            if unrecorded is not None:
                return FinishedCheck(False, unrecorded)
        if isinstance(source, EerPages):
            return _damaged_frames_check(job, source, options, context)
    except (CryotiffError, OSError, MemoryError):
        # The input cannot be read to its end, or its pages not be made in the memory left: let
        # the conversion report it (run_job names the frame size of a movie out of memory).
        return FinishedCheck(False)
    finally:
        source.close()
    if record is None:
        return FinishedCheck(True, notes=(f"{job.destination}: {NO_RECORD}; kept, as its pages, frame size and "
                                          "sample type are right and no option changes this movie's pixels",))
    return FinishedCheck(True)


def _manifest_line_problem(job: Job, source: PageSource, found: OutputCheck, options: ConvertOptions,
                           context: RunContext | None) -> str | None:
    """Why no line of the manifest describes the output cryotiff wrote at ``job.destination``
    (one with a record), or None when its last line for it does: the same page count, frame
    size, sample type and file size, and the digests of the first and last pages (decoded
    already, ``found``). A ``kill -9`` or a power cut between the rename and the line, or a
    line that could not be written (a full disk), leaves a TIFF that no line describes, or one
    an earlier file of that name left; kept, it could never be checked once the originals are
    gone (``--verify_only`` without ``--i``), so it is converted again, which writes its line.
    The EER check (:func:`_damaged_frames_check`) gives its own reason where it has one."""
    from .manifest import PAGE_DIGEST_DIGITS, page_digest

    manifest = getattr(context, "manifest", None) or Manifest(options.output_dir)
    try:
        entry = manifest.recorded(job.destination)
    except OutputError:
        entry = None
    if isinstance(source, EerPages) and (entry is None or entry.left_out_raw_frames is None):
        return None  # _damaged_frames_check says why
    described = entry is not None and found.last_page is not None and found.first_page is not None
    if described:
        last, first = found.last_page, found.first_page
        described = (entry.output_bytes == os.stat(job.destination).st_size and entry.pages == source.n_pages
                     and tuple(entry.shape_yx) == tuple(last.shape) and entry.sample_type == str(
                         last.dtype.newbyteorder("=")) and entry.page_sha256[-1] == page_digest(last).hex()[
                         :PAGE_DIGEST_DIGITS] and entry.page_sha256[0] == page_digest(first).hex()[:PAGE_DIGEST_DIGITS])
    if described:
        return None
    what = "no line of" if entry is None else "the last line for it in"
    return (f"{job.destination}: {what} {manifest.path} describes {'it' if entry is None else 'another file'} (a run "
            "stopped, or a full disk, before its line was written), so --verify_only could not check it once "
            f"the originals are gone")


def damaged_frames_text(frame_numbers: Sequence[int]) -> tuple[str, str]:
    """``("2 damaged raw frames", "frames 2, 5")`` for damaged raw EER frames (1-based; the first
    10 named)."""
    plural = "s" * (len(frame_numbers) != 1)
    shown = ", ".join(str(n) for n in frame_numbers[:10]) + (", ..." if len(frame_numbers) > 10 else "")
    return f"{len(frame_numbers)} damaged raw frame{plural}", f"frame{plural} {shown}"


def _damaged_frames_check(job: Job, source: EerPages, options: ConvertOptions,
                          context: RunContext | None) -> FinishedCheck:
    """The last test of an EER output otherwise finished: the damaged raw frames its pages leave
    out (as RELION does) are known only from its manifest line (the pages, rendered again, leave
    them out again). Converting the movie again would leave them out again: the output is kept,
    and the rerun says what its conversion said (RELION's warning for each frame; the summary
    counts them, and without ``--ignore_error`` the exit status is 1). A frame that now reads (a
    new copy of the movie, of the same size) has the movie converted again, as has an output
    that no line describes (a manifest removed, a line of an earlier cryotiff or of another
    file than the one there now), since nothing then says whether it lacks frames."""
    from .io.eer.render import corrupt_frame_warning

    manifest = getattr(context, "manifest", None) or Manifest(options.output_dir)
    try:
        entry = manifest.recorded(job.destination)
    except OutputError:
        entry = None
    if (entry is None or entry.left_out_raw_frames is None
            or entry.output_bytes != os.stat(job.destination).st_size):
        return FinishedCheck(False, f"{job.destination}: no line of {manifest.path} says which damaged raw frames of "
                                    f"{job.source} were left out of it")
    left_out = entry.left_out_raw_frames
    if not left_out:
        return FinishedCheck(True)
    n_raw = source.movie.info.n_frames
    reading = [n for n in left_out if n > n_raw or source.movie.events(n - 1) is not None]
    if reading:
        plural = len(reading) != 1
        return FinishedCheck(False, f"{job.destination}: raw frame{'s' * plural} "
                                    f"{', '.join(str(n) for n in reading)} of {job.source}, left out of it as damaged "
                                    f"at its conversion, now read{'' if plural else 's'} (a new copy of the movie?)")
    count, numbers = damaged_frames_text(left_out)
    still = "they are damaged still" if len(left_out) != 1 else "it is damaged still"
    return FinishedCheck(True, notes=(f"{job.destination}: kept from an earlier conversion, which left out {count} of "
                                      f"{job.source} ({numbers}); {still}",),
                         warnings=tuple(corrupt_frame_warning(str(job.source), n) for n in left_out),
                         damaged_eer_frames=len(left_out))


def _zero_block_problem(job: Job, source: PageSource, found: OutputCheck) -> str | None:
    """Why a page whose stored bytes hold an aligned 4 KiB of zeros (``found.zero_blocks``: blocks
    a file server lost after the file was complete read back as zeros) is not the movie's page:
    it does not decode, or decodes to other pixels; None when every such page is the movie's
    (zeros of its own: a blank frame stored uncompressed). The first and last pages are compared
    already (:func:`_differing_page`); each other such page costs one page made again."""
    from .io.tiff import open_tiff

    others = [(index, offset) for index, offset in found.zero_blocks if 0 < index < source.n_pages - 1]
    if not others:
        return None
    stored_movie = open_tiff(job.destination)
    try:
        for index, offset in others:
            hole = f"{job.destination}: page {index + 1} holds 4 KiB of zero bytes at byte {offset} (lost blocks?)"
            try:
                page = stored_movie.read_frame(index)
                page = page.astype(page.dtype.newbyteorder("="), copy=False)
            except CryotiffError as exc:  # "<path>: page 3 cannot be decoded: ..." -> "cannot be decoded: ..."
                said = str(exc)
                return f"{hole} and {said.split(f': page {index + 1} ', 1)[-1]}"
            try:
                expected = source.page(index)
            except WiderTypeNeeded:
                return f"{hole} and differs from page {index + 1} of {job.source}"
            if page.shape != expected.shape or not np.array_equal(page.view(f"u{page.dtype.itemsize}"),
                                                                  expected.view(f"u{expected.dtype.itemsize}")):
                return f"{hole} and differs from page {index + 1} of {job.source}"
    finally:
        stored_movie.close()
    return None


def _differing_page(source: PageSource, found: OutputCheck) -> str | None:
    """``"last"`` or ``"first"`` when that page of the TIFF is not, bit for bit, the page the
    movie gives now; None when both are. The record names the input by file name and size only,
    and a movie replaced by another of the same shape (an MRC of the same frame count, say) has
    both; the last page alone misses one whose last frames are alike (blank frames at the end
    of an exposure) and a file whose first blocks arrived after its conversion (a transfer that
    writes blocks out of order). Two pages are made again, so the check costs about two pages'
    conversion."""
    if found.last_page is None or found.first_page is None:
        return "last"
    if found.dtype is not None and found.dtype != source.dtype and hasattr(source, "retype"):
        source.retype(found.dtype)  # written again wider, as the conversion would have
    compared = [("last", source.n_pages - 1, found.last_page)] + (
        [("first", 0, found.first_page)] if source.n_pages > 1 else [])
    for which, index, page in compared:
        try:
            expected = source.page(index)
        except WiderTypeNeeded:
            return which  # the page does not fit the TIFF's sample type
        stored = page.astype(page.dtype.newbyteorder("="), copy=False)
        if stored.dtype != expected.dtype or stored.shape != expected.shape or not np.array_equal(
                stored.view(f"u{stored.dtype.itemsize}"), expected.view(f"u{expected.dtype.itemsize}")):
            return which
    return None


def is_finished(job: Job, options: ConvertOptions, context: RunContext | None = None) -> bool:
    """:func:`check_finished`, as a yes or no."""
    return check_finished(job, options, context).finished


def skipped_result(job: Job, check: FinishedCheck) -> MovieResult:
    """The result of a movie ``--only_do_unfinished`` skips."""
    result = MovieResult(job.source, job.destination, "skipped", "already converted", notes=list(check.notes),
                         warnings=list(check.warnings))
    if check.damaged_eer_frames:
        result.details["eer_corrupt_frames"] = check.damaged_eer_frames
    return result


def converting_again(check: FinishedCheck) -> str | None:
    """The line saying why an existing output is converted again, or None."""
    return f"{check.reason}; converting again" if check.reason else None


# --------------------------------------------------------------------------- stale temporary files

#: RELION's name for a movie being written (``X.tif.tmp``).
RELION_TEMPORARY_SUFFIX = ".tmp"


class StaleTemporaries:
    """Removes the temporary files that interrupted conversions (``kill -9``, a crash, a power
    cut) left beside the outputs of a run, one movie at a time, when the movie is converted or
    skipped. Each output directory is listed once. Temporary files of live processes (another
    run writing into the same ``--o``) hold a lock and are never touched, nor is RELION's
    ``X.tif.tmp``, which carries no lock (see :mod:`cryotiff.io.atomic`)."""

    def __init__(self) -> None:
        self._listings: dict[Path, list[str]] = {}

    def _names_in(self, directory: Path) -> list[str]:
        if directory not in self._listings:
            try:
                self._listings[directory] = os.listdir(directory if str(directory) else ".")
            except OSError:
                self._listings[directory] = []
        return self._listings[directory]

    def clean(self, destination: Path, movie: bool = True) -> list[str]:
        """Remove the stale temporary files of ``destination`` (a movie's TIFF, or another file
        cryotiff writes); the lines saying what was done."""
        names = self._names_in(destination.parent)
        lines = [f"Removed {path}: a temporary file left by an interrupted " + ("conversion" if movie else "run")
                 for path in temporaries_of(destination, names) if remove_if_stale(path)]
        relion_name = destination.name + RELION_TEMPORARY_SUFFIX
        if movie and relion_name in names:
            lines.append(f"{destination.parent / relion_name}: left alone (RELION's name for a movie it is writing; "
                         "delete it if no RELION run is writing there)")
        return lines


# --------------------------------------------------------------------------- gains


def _first_movie_with(jobs: Sequence[Job], wanted: Callable[[Job], bool]) -> Job | None:
    for job in jobs:
        try:
            if wanted(job):
                return job
        except CryotiffError:
            continue  # a broken movie is reported when it is converted
    return None


def _shape_yx(job: Job) -> tuple[int, int]:
    with open_movie(job.source) as movie:
        return tuple(movie.info.shape_yx)


def _is_float_movie(job: Job) -> bool:
    if movie_kind(job.source) == "eer":
        return False
    with open_movie(job.source) as movie:
        return movie.info.dtype.kind == "f"


def prepare(
    jobs: Sequence[Job], options: ConvertOptions, reporter: Reporter, write_files: bool = True,
    check_existing: bool = False, output_directory: CheckedDirectory | None = None,
) -> RunContext:
    """Load and convert the run's gain once, before any movie, as RELION's ``initialise`` does.

    * ``--gain`` with float (gain-normalised) movies: the estimate and its reliability map are
      read; ``<o>/gain-reference.mrc`` (the gain, 1.0 at unreliable pixels) is written.
    * ``--gain`` with EER movies: the EER gain is converted to a multiplicative gain on the
      output grid and written as ``<o>/gain-reference.mrc``.
    * EER movies without ``--gain``: RELION's warning about the inverse convention.

    An existing ``gain-reference.mrc`` is kept when it holds the same reference, and never
    replaced when it holds another (:func:`cryotiff.gain.keep_or_write_gain_reference`).

    ``write_files=False`` (MPI ranks other than 0) loads the same state silently;
    ``check_existing`` (``--dry_run``) then still refuses what the real run would refuse.
    ``output_directory``: ``--o`` as the run checked it when it made it: the gain reference and
    every TIFF go there or nowhere (``RunContext.output_dir_identity``); without it, ``--o`` as
    it is when the gain reference is written (or the first movie, if none is).

    Raises:
        OptionError: one ``--gain`` for both EER and MRC/TIFF movies.
        ExistingOutputError: ``<o>/gain-reference.mrc`` holds another gain reference.
        GainError: the gain cannot be read or converted.
    """
    context = RunContext()
    if output_directory is not None:
        context.output_dir_identity = output_directory.identities[0]
    say = reporter.message if write_files else (lambda text: None)
    warn = reporter.warning if write_files else (lambda text: None)
    if options.estimate_gain:
        return context
    first_eer = _first_movie_with(jobs, lambda job: movie_kind(job.source) == "eer")
    if options.gain is None:
        if first_eer is not None:
            from .eer_gain import NO_GAIN_WARNING

            warn(NO_GAIN_WARNING)
        return context
    from . import gain as gain_module  # only runs with a gain need it

    reference_path = options.output_dir / gain_module.GAIN_REFERENCE_NAME
    if first_eer is not None:
        if _first_movie_with(jobs, lambda job: movie_kind(job.source) != "eer") is not None:
            raise OptionError(
                "--gain names one gain, but the input mixes EER movies (whose gain is converted) with "
                "MRC/TIFF movies (whose gain is an estimate): convert them in separate runs"
            )
        from .eer_gain import convert_eer_gain
        from .io.eer import EerMovie

        with EerMovie(first_eer.source) as eer:
            eer.check_upsampling(options.eer_upsampling)
            detector_size = eer.info.shape_yx[1]
        conversion = convert_eer_gain(options.gain, detector_size, options.eer_upsampling)
        for line in conversion.messages():
            say(line)
        context.eer_gain_reference = conversion.gain
        if write_files:
            _prepare_to_write(reference_path, options, say)
            if _keep_or_write_reference(reference_path, conversion.gain, jobs, options,
                                        _checked_output_dir(options, context)):
                say(gain_module.written_gain_reference_message(options.output_dir) + "\n")  # RELION's words, also for --o .
            else:
                say(gain_module.kept_gain_reference_message(reference_path) + "\n")
        elif check_existing:
            _refuse_another_reference(reference_path, conversion.gain, jobs, options)
        return context
    if _first_movie_with(jobs, _is_float_movie) is None:
        warn(gain_module.GAIN_IRRELEVANT_WARNING)
        return context
    hashed: dict[str, str] = {}  # the two files as read: the record must name what made the pages
    estimate = gain_module.GainEstimate.load(options.gain, hashed=hashed)
    reliability_path = gain_module.find_reliability_path(options.gain)
    say(gain_module.read_message(options.gain))
    say(gain_module.read_message(reliability_path) + "\n")
    unusable = estimate.unusable_gain_warning(options.thresh, options.gain)
    if unusable:
        warn(unusable)
    try:
        context.gain_identity = gain_identity(options.gain, reliability_path, hashed)
    except OSError as exc:
        raise GainError(f"{options.gain}: cannot be read ({exc.strerror or exc})") from None
    # What the pages need, without the estimate itself (its gain is in the gain reference).
    context.reliable_mask = estimate.reliable_mask(options.thresh)
    context.gain_reference = gain_module.gain_reference(estimate, options.thresh, context.reliable_mask)
    context.reliability = estimate.reliability
    fitting = _first_movie_with(jobs, lambda job: _is_float_movie(job) and _shape_yx(job) == estimate.shape_yx)
    if fitting is None:
        # A gain-reference.mrc that fits no movie would only mislead: every float movie fails
        # with the sizes (and a hint), and no gain reference is written.
        warn(f"WARNING: {options.gain} ({estimate.shape_yx[1]} x {estimate.shape_yx[0]} pixels) fits none of "
             f"the float movies; {reference_path} is not written")
        return context
    if write_files:
        _prepare_to_write(reference_path, options, say)
        if _keep_or_write_reference(reference_path, context.gain_reference, jobs, options,
                                    _checked_output_dir(options, context)):
            say(gain_module.written_gain_reference_message(options.output_dir) + "\n")
        else:
            say(gain_module.kept_gain_reference_message(reference_path) + "\n")
    elif check_existing:
        _refuse_another_reference(reference_path, context.gain_reference, jobs, options)
    return context


def _checked_output_dir(options: ConvertOptions, context: RunContext) -> CheckedDirectory:
    """``--o`` as the run checked it (``context.output_dir_identity``), else as it is now, which
    the movies then must go to too.

    Raises:
        OutputError: ``--o`` is no longer the directory checked, or cannot be looked at.
    """
    try:
        checked = CheckedDirectory(options.output_dir, options.output_dir, context.output_dir_identity)
    except OutputError as exc:
        raise OutputError(f"{options.output_dir / 'gain-reference.mrc'}: not written: {exc}") from None
    if context.output_dir_identity is None:
        context.output_dir_identity = checked.identities[0]
    return checked


def _keep_or_write_reference(path: Path, reference, jobs: Sequence[Job], options: ConvertOptions,
                             directory: CheckedDirectory | None = None) -> bool:
    """``<o>/gain-reference.mrc`` written (into ``directory``, --o as the run checked it), or
    kept where it holds this run's reference already
    (:func:`cryotiff.gain.keep_or_write_gain_reference`); True if written.

    Raises:
        ExistingOutputError: it holds another reference (before any movie is converted).
    """
    from .gain import keep_or_write_gain_reference

    return keep_or_write_gain_reference(path, reference, made_from=f"--gain {options.gain}", gain_path=options.gain,
                                        dependents=lambda: outputs_made_with_a_gain(jobs), directory=directory)


def _refuse_another_reference(path: Path, reference, jobs: Sequence[Job], options: ConvertOptions) -> None:
    """What :func:`_keep_or_write_reference` refuses, without writing anything."""
    from .gain import refuse_another_gain_reference

    refuse_another_gain_reference(path, reference, made_from=f"--gain {options.gain}",
                                  dependents=lambda: outputs_made_with_a_gain(jobs))


#: At most how many existing outputs :func:`outputs_made_with_a_gain` opens.
_DEPENDENTS_LOOKED_AT = 1000


def outputs_made_with_a_gain(jobs: Sequence[Job]) -> str:
    """The outputs of ``jobs`` that exist and record a ``--gain`` (:mod:`cryotiff.recorded_options`),
    as the end of a sentence (", for example out/a.tif (made with --gain g.bin (SHA-256 ...))");
    "" if none. Opens at most :data:`_DEPENDENTS_LOOKED_AT` of them."""
    from .recorded_options import describe_option, read_record

    found: list[tuple[Path, str]] = []
    looked_at = 0
    for job in jobs:
        if looked_at >= _DEPENDENTS_LOOKED_AT:
            break
        if not job.destination.is_file():
            continue
        looked_at += 1
        record = read_record(job.destination)
        if record is not None and record.made_with.get("gain"):
            found.append((job.destination, describe_option("gain", record.made_with["gain"])))
    if not found:
        return ""
    first, how = found[0]
    more = f" and {len(found) - 1} more of this run's outputs" if len(found) > 1 else ""
    return f"; {first}{more} {'were' if more else 'was'} made with {how}"


def _prepare_to_write(path: Path, options: ConvertOptions, say: Callable[[str], None]) -> None:
    """Before writing ``path`` (a gain file in ``--o``): refuse if it is the ``--gain`` file
    itself (``--gain <o>/gain-reference.mrc``), create ``--o``, remove stale temporary files.

    Raises:
        OptionError: ``path`` is the ``--gain`` file.
        OutputError: ``--o`` cannot be created.
    """
    if options.gain is not None and InputFiles([options.gain]).input_at(path) is not None:
        raise OptionError(f"--gain {options.gain}: this run would write {path} over it; choose another --o "
                          "(or rename the gain file)")
    try:
        options.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{options.output_dir}: cannot create the output directory ({exc.strerror})") from None
    for line in StaleTemporaries().clean(path, movie=False):
        say(line)


# --------------------------------------------------------------------------- gain estimation


#: ``MovieResult.details`` key: frames of the movie that :func:`estimate_movie` added to the estimate.
FRAMES_ADDED = "estimate_frames_added"


def estimate_movie(
    path: Path,
    estimate,
    options: ConvertOptions,
    executor: Executor | None,
    reporter: Reporter,
):
    """Update a gain estimate with every frame of one float movie (RELION's ``--estimate_gain``).

    Prints RELION's per-frame line through ``reporter.message``. ``estimate`` is a
    :class:`cryotiff.gain.GainEstimate` or None (then a new one of the movie's frame size is
    started). The estimate is updated in place frame by frame; saving it is the caller's job.

    Returns:
        ``(estimate, result)``; the result's status is ``converted`` (estimated) or ``failed``.
        ``result.details["estimate_frames_added"]`` counts the frames that went into the
        estimate (a movie that fails part-way has added some).
    """
    from .gain import ESTIMATE_NEEDS_MODE2, GainEstimate, different_size_message, format_estimate_line

    started = time.perf_counter()
    result = MovieResult(path, None, "converted")
    try:
        if movie_kind(path) == "eer":
            raise OptionError(f"{path}: --estimate_gain does not make sense for EER movies.")
        with open_movie(path) as movie:
            info = movie.info
            if info.dtype.kind != "f":
                raise GainError(f"{path}: {ESTIMATE_NEEDS_MODE2}")
            if estimate is None:
                estimate = GainEstimate.new(info.shape_yx)
            if tuple(estimate.shape_yx) != tuple(info.shape_yx):
                raise GainError(f"{path}: {different_size_message(str(path))}")
            # The next frame is read while this one updates the estimate: with --j N on the same
            # threads (the update runs in row blocks on them), with --j 1 on a reading thread of
            # its own (reading releases the GIL; a fifth of the work). The window bounds the
            # frames in memory to two, as long as the frame done with is let go before the next
            # is asked for (no enumerate, which keeps its last item until it has the next). A
            # frame done with is read into again.
            recycler = FrameRecycler(movie, capacity=3)
            reader = ThreadPoolExecutor(1, "cryotiff-read") if executor is None else None
            frames = ordered_map(
                lambda k: recycler.read(k).astype("float32", copy=False), info.n_frames, executor or reader,
                window=2,
            )
            try:
                for index in range(info.n_frames):
                    frame = next(frames)
                    result.details[FRAMES_ADDED] = index + 1  # from here on the estimate holds the frame
                    stats = estimate.update(frame, options.thresh, executor=executor)
                    recycler.give_back(frame)  # the update keeps no view of it
                    del frame
                    reporter.message(format_estimate_line(str(path), index, stats))
            finally:
                frames.close()  # the reads not started are cancelled and run ones waited for, then
                if reader is not None:  # the reader goes (a cancelled read would wait for it for ever)
                    reader.shutdown(wait=True)
            result.n_pages = info.n_frames
            result.input_bytes = info.frame_nbytes * info.n_frames
    except CryotiffError as exc:
        result.status, result.message = "failed", str(exc)
    result.seconds = time.perf_counter() - started
    return estimate, result


def estimate(jobs: Sequence[Job], options: ConvertOptions, reporter: Reporter | None = None) -> list[MovieResult]:
    """``--estimate_gain`` over all movies in input order (RELION shuffles them randomly).

    ``--gain X.bin`` resumes from a saved state. After every movie the state is saved atomically
    as ``<o>/gain_estimate.bin`` and ``<o>/gain_estimate_reliablity.bin``, so Ctrl-C at any moment
    leaves the last saved pair intact. No TIFF is written.
    """
    from .gain import (
        GAIN_ESTIMATE_NAME,
        RELIABILITY_ESTIMATE_NAME,
        GainEstimate,
        find_reliability_path,
        read_message,
        replaced_estimate_warning,
        resume_warning,
        updated_message,
    )

    reporter = reporter or Reporter()
    state = None
    if options.gain is not None:
        state = GainEstimate.load(options.gain)
        reporter.message(read_message(options.gain))
        reporter.message(read_message(find_reliability_path(options.gain)) + "\n")
        reporter.warning(resume_warning(options.gain))
    replacing = replaced_estimate_warning(options.output_dir, options.gain)
    if replacing:
        reporter.warning(replacing)
    stale = StaleTemporaries()
    try:
        options.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{options.output_dir}: cannot create the output directory ({exc.strerror})") from None
    for name in (GAIN_ESTIMATE_NAME, RELIABILITY_ESTIMATE_NAME):
        for line in stale.clean(options.output_dir / name, movie=False):
            reporter.message(line)
    results = []
    # The state as it was before the current movie, should the movie fail part-way: the pair
    # saved after the last movie (or the --gain one), read back, rather than a copy of the state
    # kept in memory all along (the gain and the counters again: 6 bytes a pixel).
    saved = options.gain
    with thread_pool(options.threads) as executor:
        for job in jobs:
            reporter.message(f"Processing {job.source}")
            state, result = estimate_movie(job.source, state, options, executor, reporter)
            if result.status == "converted":
                state.save(options.output_dir)
                saved = options.output_dir / GAIN_ESTIMATE_NAME
                reporter.message(updated_message(options.output_dir) + "\n")
            elif result.details.get(FRAMES_ADDED):
                # A movie that fails part-way must not leave its first frames in the estimate.
                state = None
                state = GainEstimate.load(saved) if saved is not None else None
            elif saved is None:
                state = None  # the fresh estimate this movie started holds nothing
            results.append(result)
            reporter.movie_finished(result)
    return results


# --------------------------------------------------------------------------- running


@contextlib.contextmanager
def thread_pool(threads: int) -> Iterator[Executor | None]:
    """:func:`make_executor` as a context: the pool is shut down (pending tasks cancelled) on the
    way out, also after an error or Ctrl-C."""
    executor = make_executor(threads)
    try:
        yield executor
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def make_executor(threads: int) -> Executor | None:
    """Threads for one movie's pages (``--j``); None for ``--j 1`` (everything inline)."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cryotiff") if threads > 1 else None


def run_job(
    job: Job,
    options: ConvertOptions,
    executor: Executor | None,
    reporter: Reporter,
    context: RunContext | None = None,
) -> MovieResult:
    """Convert one movie; every problem becomes a ``failed`` result naming the file (the other
    movies go on). KeyboardInterrupt propagates after the temporary file is removed (by the
    writer, :func:`cryotiff.io.tiff.write_movie`)."""
    started = time.perf_counter()
    try:
        try:
            job.destination.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{job.destination.parent}: cannot create the output directory ({exc.strerror})") from None
        # The directory as checked now is the one the TIFF is written into, or the movie fails
        # (a directory on the way replaced by a symbolic link meanwhile); --o must lead where it
        # led for the run's first movie.
        checked = CheckedDirectory(options.output_dir, job.destination.parent,
                                   context.output_dir_identity if context is not None else None)
        if context is not None and context.output_dir_identity is None and checked.root == Path(options.output_dir):
            context.output_dir_identity = checked.identities[0]
        result = convert_movie(
            job.source,
            job.destination,
            options,
            executor=executor,
            on_page=lambda done, total: reporter.page_done(job, done, total),
            context=context,
            output_directory=checked,
        )
    except CryotiffError as exc:
        result = MovieResult(job.source, job.destination, "failed", str(exc))
    except MemoryError:
        result = MovieResult(job.source, job.destination, "failed", out_of_memory_message(job.source, options))
    except OSError as exc:
        result = MovieResult(job.source, job.destination, "failed", f"{job.source}: {exc.strerror or exc}")
    result.seconds = time.perf_counter() - started
    return result


def out_of_memory_message(source: Path, options: ConvertOptions) -> str:
    """What a movie whose conversion ran out of memory is told: its frame size and about how
    many frames a conversion holds at once (peak memory measured on 8192 x 8192 MRC movies:
    2.6 to 2.8 frames at ``--j 1``, 3.8 to 4.2 at ``--j 2``)."""
    from .io.memory import size_text

    try:
        with open_movie(source) as movie:
            info = movie.info
    except (CryotiffError, OSError, MemoryError):
        return f"{source}: out of memory"
    ny, nx = info.shape_yx
    frame_nbytes = ny * nx * info.dtype.itemsize
    frames = max(options.threads, 1) + 2
    return (f"{source}: out of memory while converting its frames of {ny} x {nx} pixels ({size_text(frame_nbytes)} "
            f"each); a conversion holds about {frames} of them at once with --j {options.threads} "
            f"({size_text(frames * frame_nbytes)})")


@dataclass
class Summary:
    """Totals of a run, for the final table."""

    converted: int = 0
    skipped: int = 0
    failed: int = 0
    frames_verified: int = 0
    input_bytes: int = 0
    output_bytes: int = 0
    wall_seconds: float = 0.0
    failures: list[MovieResult] = field(default_factory=list)
    damaged_eer_frames: int = 0  # damaged raw EER frames left out of converted movies
    movies_with_damaged_frames: int = 0
    not_in_manifest: int = 0  # converted movies whose manifest line could not be written

    @property
    def ratio_percent(self) -> float:
        return 100.0 * self.output_bytes / self.input_bytes if self.input_bytes else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.input_bytes / 1e6 / self.wall_seconds if self.wall_seconds > 0 else 0.0


def summarise(results: Iterable[MovieResult], wall_seconds: float) -> Summary:
    summary = Summary(wall_seconds=wall_seconds)
    for result in results:
        # Also a skipped output whose earlier conversion left damaged frames out: it still lacks them.
        damaged = int(result.details.get("eer_corrupt_frames", 0)) if result.status in ("converted", "skipped") else 0
        if damaged:
            summary.damaged_eer_frames += damaged
            summary.movies_with_damaged_frames += 1
        if result.status == "converted":
            summary.converted += 1
            summary.not_in_manifest += bool(result.details.get(NOT_IN_MANIFEST))
            summary.frames_verified += result.frames_verified
            summary.input_bytes += result.input_bytes
            summary.output_bytes += result.output_bytes
        elif result.status == "skipped":
            summary.skipped += 1
        else:
            summary.failed += 1
            summary.failures.append(result)
    return summary


def run(
    jobs: Sequence[Job],
    options: ConvertOptions,
    reporter: Reporter | None = None,
    output_directory: CheckedDirectory | None = None,
) -> list[MovieResult]:
    """Convert every job in order (finished ones skipped with ``--only_do_unfinished``);
    ``output_directory``: ``--o`` as the run checked it (see :func:`prepare`)."""
    reporter = reporter or Reporter()
    results: list[MovieResult] = []
    context = prepare(jobs, options, reporter, output_directory=output_directory)
    context.manifest = Manifest(options.output_dir)
    stale = StaleTemporaries()
    with manifest_waited(context.manifest, reporter, lambda: results), thread_pool(options.threads) as executor:
        for index, job in enumerate(jobs, start=1):
            results.append(handle_job(job, index, len(jobs), options, executor, reporter, context, stale))
    return results


#: ``MovieResult.details`` key: why a converted movie's TIFF is not in the manifest (its line
#: could not be written); the run's exit status is then 1 (:func:`summarise`).
NOT_IN_MANIFEST = "not_in_manifest"


@contextlib.contextmanager
def manifest_waited(manifest: Manifest | None, reporter: Reporter,
                    results: Callable[[], Sequence[MovieResult]] | None = None) -> Iterator[None]:
    """Around a run's movies: on the way out (also after Ctrl-C), wait until the manifest holds
    every TIFF written, and pass on what could not be added as warnings; the results of those
    movies (of ``results()``) are marked :data:`NOT_IN_MANIFEST`."""
    def wait(deliver_held: bool) -> None:
        if manifest is None:
            return
        # Ctrl-C and SIGTERM are held back meanwhile (a TIFF of a few GB takes seconds to hash):
        # an interrupt must not end the run before the lines of the TIFFs already in place.
        with interrupts_held(deliver_held):
            for problem in manifest.wait():
                reporter.warning(problem)
            unrecorded = set(manifest.unrecorded())
            for result in (results() if results is not None else ()):
                if result.status == "converted" and result.destination in unrecorded:
                    result.details[NOT_IN_MANIFEST] = True

    try:
        yield
    except BaseException:
        wait(deliver_held=False)  # stopping already: the signals held back add nothing
        raise
    wait(deliver_held=True)


def _hangup_if_caught() -> tuple[int, ...]:
    """SIGHUP, where the command stops on it (:mod:`cryotiff.hangup`); else nothing, so that a
    SIGHUP ignored (``nohup``) or left at its default stays so."""
    return (signal.SIGHUP,) if callable(signal.getsignal(signal.SIGHUP)) else ()


@contextlib.contextmanager
def interrupts_held(deliver_held: bool = True) -> Iterator[None]:
    """Hold back Ctrl-C, SIGTERM and (where the command stops on it) SIGHUP while the block runs (in the main thread, where Python
    handles signals): one that comes meanwhile is delivered again, to the handler in place
    before, once the block has ended without an exception (with ``deliver_held``); the
    others are dropped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from .hangup import silence_hung_up_terminal

    caught: list[int] = []

    def hold(signum, frame) -> None:
        if signum == signal.SIGHUP:  # the terminal closed: what is printed meanwhile must not fail
            silence_hung_up_terminal()
        caught.append(signum)

    held = (signal.SIGINT, signal.SIGTERM) + _hangup_if_caught()
    previous = {signum: signal.signal(signum, hold) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if caught and deliver_held:
        signal.raise_signal(caught[0])


def handle_job(
    job: Job,
    index: int,
    total: int,
    options: ConvertOptions,
    executor: Executor | None,
    reporter: Reporter,
    context: RunContext | None,
    stale: StaleTemporaries,
) -> MovieResult:
    """One movie of a run (``index`` of ``total``, 1-based): its stale temporary files removed,
    skipped if finished (``--only_do_unfinished``), else converted; reported either way."""
    for line in stale.clean(job.destination):
        reporter.message(line)
    check = check_finished(job, options, context) if options.only_do_unfinished else FinishedCheck(False)
    if check.finished:
        result = skipped_result(job, check)
    else:
        again = converting_again(check)
        if again:
            reporter.message(again)
        reporter.movie_started(job, index, total)
        result = run_job(job, options, executor, reporter, context)
    reporter.movie_finished(result)
    return result
