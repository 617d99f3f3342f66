"""``convert-to-tiff``: RELION's ``relion_convert_to_tiff`` options, cryotiff's pipeline.

This module and ``mpi.py`` are the only ones that talk to the terminal. Every error the library
raises becomes one line naming the file and the problem; the exit status is 0 when every movie
converted (or was skipped as finished), 1 when any failed, 2 for invalid options, 130 on Ctrl-C.
"""

from __future__ import annotations

# Before anything imports numpy (its OpenBLAS reads the setting once, as numpy is imported).
from . import command_environment  # noqa: F401, I001

import argparse
import contextlib
import io
import os
import signal
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence, TextIO

from . import __version__, hangup
from .codecs import COMPRESSION_CHOICES, opt_in_warning, validate_options
from .convert import ConvertOptions, MovieResult
from .errors import CryotiffError, OptionError, OutputError
from .inputs import is_utf8_text, printable
from .io.atomic import CheckedDirectory
from .jobs import Job, Reporter, Summary, plan, run, summarise
from .movies_star import MOVIES_STAR_NAME, write_movies_star
from .pipeline import JobAborted, PipelineControl, PipelineReporter, pipeline_control_from_argv
from .progress import RunProgress
from .watch import DEFAULT_SETTLE_SECONDS, WatchOptions, latest_results
from .report import (check_report_path, checked_report_directory, format_bytes, format_dry_run, mark_a_gone_watch,
                     plan_dry_run, write_dry_run_report, write_report)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DESCRIPTION = (
    "Convert cryo-EM movies (MRC, TIFF, EER) into losslessly compressed multi-page TIFF that RELION, "
    "MotionCor2/3, cryoSPARC and Warp read directly. A drop-in for relion_convert_to_tiff: the same "
    "options, output names, pixels and orientation (TIFF rows are stored bottom-up, the Y flip that "
    "RELION, IMOD, SerialEM and MotionCor2 apply on every TIFF read and write)."
)

#: ``--help`` is wrapped at the terminal's width, but never wider than this.
HELP_MAX_WIDTH = 100


class HelpFormatter(argparse.HelpFormatter):
    """Wraps the description and every option's help at one width: the terminal's, at most
    :data:`HELP_MAX_WIDTH` columns."""

    def __init__(self, prog: str) -> None:
        import shutil

        width = min(shutil.get_terminal_size().columns, HELP_MAX_WIDTH) - 2
        super().__init__(prog, width=width, max_help_position=min(24, width // 3))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; its groups follow RELION's help sections."""
    parser = argparse.ArgumentParser(
        prog="convert-to-tiff",
        description=DESCRIPTION,
        allow_abbrev=False,  # "--o" must never be taken as a prefix of "--only_do_unfinished"
        formatter_class=HelpFormatter,
    )
    general = parser.add_argument_group("General Options")
    general.add_argument("--i", "--in_movies", dest="i", nargs="+", metavar="INPUT",
                         help="Input movies: .mrc/.mrcs/.tif/.tiff/.eer/.ecc files, a movie .star file, "
                              "a .lst list, directories or quoted glob patterns (several allowed). "
                              "--in_movies is the name a RELION External job passes")
    general.add_argument("--o", default="./", metavar="DIR", help="Output directory (default: ./)")
    general.add_argument("--only_do_unfinished", action="store_true",
                         help="Skip movies whose .tif exists, is complete and was made from the same input "
                              "with the same options (those that change its pixels); convert the others again "
                              "and say why")
    general.add_argument("--j", type=int, default=1, metavar="N",
                         help="Threads per movie: frames are read, transformed and encoded concurrently (default: 1)")
    general.add_argument("--gain", metavar="FILE",
                         help="Estimated gain map and its reliability map (read) for float (mode 2) movies; "
                              "the EER gain reference to convert for EER movies; with --check_gain, the gain "
                              "reference (MRC, TIFF or TFS .gain) to check")
    general.add_argument("--thresh", type=int, default=50, metavar="N",
                         help="Number of observations needed before a pixel's gain is reliable (default: 50)")
    general.add_argument("--estimate_gain", action="store_true",
                         help="Estimate the gain of gain-normalised float (mode 2) movies; writes no TIFF")
    general.add_argument("--lossy", action="store_true",
                         help="With --gain: round unreliable (defect) pixels so the whole movie is stored as integers")
    eer = parser.add_argument_group("EER rendering options")
    eer.add_argument("--eer_grouping", type=int, default=40, metavar="N",
                     help="Raw EER frames summed into one TIFF page (default: 40)")
    eer.add_argument("--eer_dose_per_fraction", type=float, default=None, metavar="E_PER_A2",
                     help="Instead of --eer_grouping: the dose per TIFF page in e/A^2, from the EER metadata")
    eer.add_argument("--eer_upsampling", type=int, default=1, choices=(-1, 1, 2, 3), metavar="N",
                     help="1 = physical grid (4K), 2 = 2x super-resolution (8K), 3 = 4x (16K), -1 = 2x binned (default: 1)")
    eer.add_argument("--short", action="store_true", help="Render EER into uint16 instead of uint8")
    tiff = parser.add_argument_group("TIFF writing options")
    tiff.add_argument("--compression", default="auto", choices=COMPRESSION_CHOICES, metavar="TYPE",
                      help="auto (default): the smallest of LZW and standard Deflate encodings, tried on the "
                           "first frame, among those at least as fast as RELION's choice; none; lzw; "
                           "deflate (= zip) at --deflate_level; opt-in zstd[:LEVEL] (1-22, default 3) or "
                           "lzma[:LEVEL] (0-9, default 6), which IMOD and older libtiff cannot read")
    tiff.add_argument("--deflate_level", type=int, default=6, metavar="N",
                      help="Level of --compression deflate: 1-12 (libdeflate; 10-12 are slow; default: 6)")
    tiff.add_argument("--ignore_error", action="store_true",
                      help="Do not stop on a non-integer value in a reliable pixel of a float movie (round it), "
                           "nor exit with status 1 when damaged EER frames were left out (as RELION does)")
    tiff.add_argument("--line_by_line", action="store_true", help="One TIFF strip per row instead of one per frame")
    tiff.add_argument("--no_verify", action="store_true",
                      help="Do not decode every strip and compare it with its frame before writing it")
    other = parser.add_argument_group("Other options")
    other.add_argument("--demo", action="store_true",
                       help="Synthesise a small movie of each detector kind into <o>/demo_movies and convert each "
                            "with its user-guide recipe into <o>/converted/<kind>/")
    other.add_argument("--benchmark", action="store_true",
                       help="Try every codec on the first frames of the --i movies (or of the demo movies) and "
                            "print size %%, encode and decode MB/s, and which TIFF readers decode each; converts nothing")
    other.add_argument("--dry_run", action="store_true",
                       help="List what would be converted or skipped and the expected output size (estimated by "
                            "encoding the first frame of a sample of movies); writes nothing")
    other.add_argument("--check_gain", action="store_true",
                       help="Find the orientation and convention of the --gain reference from the --i movies: "
                            "scores its 8 rotations/flips, multiplied and divided, prints the RELION "
                            "(--gain_rot/--gain_flip) and MotionCor2/3 (-RotGain/-FlipGain/-InvGain) flags and "
                            "writes <o>/gain-reference.mrc in the movies' orientation, multiplicative, to be used "
                            "with no flags; exit status 1 when the movies cannot tell. Converts nothing "
                            "(docs/gain-orientation.md)")
    other.add_argument("--report", metavar="FILE.json",
                       help="Also write a JSON report: per-movie results, totals, options and version")
    other.add_argument("--verify_only", action="store_true",
                       help="Convert nothing: decode every page of each output and compare it with its original "
                            "(--i; EER rendered again and float movies integerised again with the options the "
                            "TIFF records) or, without --i, with the manifest of --o (cryotiff-manifest.jsonl, "
                            "written at conversion); one line per output and a summary; exit status 0 only if "
                            "every output is exact")
    other.add_argument("--watch", action="store_true",
                       help="After converting what the inputs name now, keep looking at them (directories and "
                            "patterns expanded again, STAR and list files read again) and convert each new movie "
                            "once it is complete; movies.star and the --report are rewritten after every movie. "
                            "Ends after --watch_timeout, or with Ctrl-C")
    other.add_argument("--settle_seconds", type=float, default=None, metavar="S",
                       help="With --watch: a movie is complete when its size and modification time have not "
                            "changed for S seconds and it reads to its end (MRC: the size its header gives; "
                            f"TIFF, EER: the last IFD) (default: {DEFAULT_SETTLE_SECONDS:g})")
    other.add_argument("--watch_timeout", type=float, default=None, metavar="S",
                       help="With --watch: stop after S seconds in which no movie appeared or changed "
                            "(default: watch until Ctrl-C or SIGTERM)")
    other.add_argument("--pipeline_control", "--pipeline-control", dest="pipeline_control", metavar="DIR",
                       nargs="?", const="",
                       help="RELION External job: write RELION_JOB_EXIT_SUCCESS/FAILURE/ABORTED and "
                            "RELION_OUTPUT_NODES.star in DIR (without DIR: in --o, the job directory) and stop "
                            "when RELION_JOB_ABORT_NOW appears there")
    other.add_argument("--version", action="version", version=f"cryotiff {__version__}")
    return parser


def options_from_args(args: argparse.Namespace) -> ConvertOptions:
    """Check the options and turn them into :class:`ConvertOptions`.

    Raises:
        OptionError: an invalid value or combination.
    """
    validate_options(args.compression, args.deflate_level)
    if args.j < 1:
        raise OptionError(f"--j must be at least 1; got {args.j}")
    if args.thresh < 1:
        raise OptionError(f"--thresh must be at least 1; got {args.thresh}")
    if args.eer_grouping < 1:
        raise OptionError(f"--eer_grouping must be at least 1; got {args.eer_grouping}")
    return ConvertOptions(
        output_dir=Path(args.o),
        only_do_unfinished=args.only_do_unfinished,
        threads=args.j,
        gain=Path(args.gain) if args.gain else None,
        thresh=args.thresh,
        estimate_gain=args.estimate_gain,
        eer_grouping=args.eer_grouping,
        eer_upsampling=args.eer_upsampling,
        eer_dose_per_fraction=args.eer_dose_per_fraction,
        short=args.short,
        compression=args.compression,
        deflate_level=args.deflate_level,
        ignore_error=args.ignore_error,
        line_by_line=args.line_by_line,
        lossy=args.lossy,
        verify=not args.no_verify,
    )


#: Modes other than a conversion run (and a RELION job's control): argparse dest -> option name.
#: None of them goes with --watch or --verify_only.
OTHER_MODES = {
    "estimate_gain": "--estimate_gain",
    "dry_run": "--dry_run",
    "demo": "--demo",
    "benchmark": "--benchmark",
    "check_gain": "--check_gain",
    "pipeline_control": "--pipeline_control",
}
#: Options that cannot go with --verify_only: argparse dest -> option name.
VERIFY_CONFLICTS = {**OTHER_MODES, "watch": "--watch", "report": "--report",
                    "only_do_unfinished": "--only_do_unfinished"}


def first_given(args: argparse.Namespace, options: dict[str, str]) -> str | None:
    """The first of ``options`` (argparse dest -> option name) given on the command line."""
    return next((option for name, option in options.items() if getattr(args, name, None) not in (None, False)), None)


def verify_conflict(args: argparse.Namespace) -> str | None:
    """Why ``--verify_only`` cannot run with these options, or None."""
    option = first_given(args, VERIFY_CONFLICTS)
    return f"--verify_only converts nothing and cannot be combined with {option}" if option else None


def run_verify(inputs: Sequence[str] | None, options: ConvertOptions, reporter: TerminalReporter) -> int:
    """``--verify_only``: each output checked against its original (``inputs``) or, without
    inputs, against the manifest of ``--o`` (:mod:`cryotiff.verify`). Exit status 0 only if
    every output is exact."""
    from .jobs import thread_pool
    from .manifest import MANIFEST_NAME, read_manifest
    from .verify import GainContexts, unlisted_outputs, verify_with_manifest, verify_with_original

    started = time.perf_counter()
    manifest = read_manifest(options.output_dir)
    verdicts = []
    with thread_pool(options.threads) as executor:
        if inputs:
            jobs, failures = plan(inputs, options)
            verdicts += [unplanned_verdict(failure) for failure in failures]
            for verdict in verdicts:
                reporter.message(verdict.line())
            contexts = GainContexts()
            for job in jobs:
                entry = manifest.get(manifest_key(job.destination, options.output_dir))
                verdicts.append(verify_with_original(job, options, executor, contexts, entry))
                reporter.message(verdicts[-1].line())
        else:
            # A manifest without a readable line leaves its TIFFs unchecked (unlisted_outputs).
            if not manifest and not (options.output_dir / MANIFEST_NAME).exists():
                raise OptionError(f"{options.output_dir / MANIFEST_NAME}: no manifest to check the outputs against; "
                                  "give the originals with --i")
            contexts = GainContexts()
            for entry in manifest.values():
                verdicts.append(verify_with_manifest(options.output_dir, entry, executor, options.threads, contexts,
                                                     options.ignore_error))
                reporter.message(verdicts[-1].line())
            for verdict in unlisted_outputs(options.output_dir, list(manifest.values())):
                verdicts.append(verdict)
                reporter.message(verdict.line())
    return finish_verify(verdicts, time.perf_counter() - started, reporter, against_originals=bool(inputs),
                         output_dir=options.output_dir)


def manifest_key(destination: Path, output_dir: Path) -> str:
    """How the manifest names an output: its path relative to ``--o``."""
    import os

    return os.path.relpath(destination, output_dir)


def unplanned_verdict(failure: MovieResult):
    """A movie of the inputs that has no output to check (two movies for one name, ...)."""
    from .verify import Verdict

    return Verdict(failure.destination or failure.source, failure.source, "unchecked", failure.message)


def finish_verify(verdicts, wall_seconds: float, reporter: TerminalReporter, against_originals: bool,
                  extra_lines: Sequence[str] = (), output_dir: Path | None = None) -> int:
    """The summary of ``--verify_only`` (also rank 0 of ``convert-to-tiff-mpi``); the exit status.
    Nothing verified is a failure: a script that deletes the originals on exit status 0 must not
    go on after checking nothing (an empty manifest, a wrong ``--o``)."""
    from .manifest import MANIFEST_NAME
    from .verify import VerifySummary

    if not verdicts:
        where = (f"{output_dir / MANIFEST_NAME} names no output and {output_dir} holds no .tif file "
                 "(is --o the directory the movies were converted into?)" if output_dir is not None and
                 not against_originals else "the inputs name no movie")
        print(f"ERROR: nothing was verified: {where}", file=reporter.err, flush=True)
        return EXIT_FAILED
    summary = VerifySummary.of(verdicts, wall_seconds)
    rate = summary.output_bytes / 1e6 / wall_seconds if wall_seconds > 0 else 0.0
    lines = ["", f"Verified {len(verdicts)} output" + "s" * (len(verdicts) != 1) + f": {summary.ok} OK, "
             f"{summary.differs} differ, {summary.missing} missing, {summary.unchecked} could not be checked",
             f"Pages decoded: {summary.pages} ({format_bytes(summary.output_bytes)} of TIFF) in {wall_seconds:.1f} s "
             f"({rate:.1f} MB/s)"]
    if summary.all_ok and summary.inexact:
        lines.append(f"Every output is as it was made, but {summary.inexact} give"
                     f"{'s' * (summary.inexact == 1)} back their originals only approximately (their lines say why).")
    elif summary.all_ok:
        lines.append("Every page of every output is exact: " + (
            "it equals its original." if against_originals else "it decodes to the pixels written at conversion."))
    _print_lines([*lines, *extra_lines], reporter.out)
    return EXIT_OK if summary.all_ok else EXIT_FAILED


def watch_from_args(args: argparse.Namespace) -> WatchOptions | None:
    """``--watch`` and its settings, checked (None without ``--watch``).

    Raises:
        OptionError: a setting without ``--watch``, a negative time, or a mode that converts
            nothing (or runs as a RELION job) with ``--watch``.
    """
    if not args.watch:
        for name in ("settle_seconds", "watch_timeout"):
            if getattr(args, name) is not None:
                raise OptionError(f"--{name} needs --watch")
        return None
    option = first_given(args, OTHER_MODES)
    if option:
        raise OptionError(f"--watch converts movies as they arrive and cannot be combined with {option}")
    settle = DEFAULT_SETTLE_SECONDS if args.settle_seconds is None else args.settle_seconds
    if not settle >= 0:
        raise OptionError(f"--settle_seconds must be 0 or more; got {args.settle_seconds}")
    if args.watch_timeout is not None and not args.watch_timeout > 0:
        raise OptionError(f"--watch_timeout must be more than 0; got {args.watch_timeout}")
    return WatchOptions(settle_seconds=settle, timeout_seconds=args.watch_timeout)


def option_conflicts(options: ConvertOptions) -> str | None:
    """Combinations of options that cannot work together, as one message (None if fine)."""
    if not is_utf8_text(options.output_dir):
        return (f"--o {printable(options.output_dir)}: the path is not UTF-8 text (the bytes shown as \\x..), so "
                "movies.star could not list the TIFFs in it; choose another --o")
    if options.lossy and options.gain is None:
        return "--lossy needs --gain (the estimated gain of the float movies)"
    if options.lossy and options.estimate_gain:
        return "--lossy applies when converting with --gain, not with --estimate_gain"
    return None


#: Former name, kept for callers written before every option was implemented.
unsupported_yet = option_conflicts


# --------------------------------------------------------------------------- terminal output


def names_never_fail_to_print(*streams: TextIO) -> None:
    """A file name whose bytes are not UTF-8 text (Python holds them as surrogates) is printed
    with those bytes as ``\\udcff`` instead of stopping the run with a UnicodeEncodeError, on a
    terminal whose encoding refuses them (``errors="strict"``, as under ``en_US.UTF-8``)."""
    for stream in streams or (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict":
            try:
                stream.reconfigure(errors="backslashreplace")  # type: ignore[attr-defined]
            except (AttributeError, ValueError, io.UnsupportedOperation):
                pass  # not a TextIOWrapper (a test's capture)


class TerminalReporter(Reporter):
    """Prints RELION's per-movie lines, warnings and errors, and the run's progress.

    On a terminal the progress is two bars (tqdm) under the scrolling lines: the run (movies done
    of N, input bytes, MB/s, time left) and the current movie's pages. In a log (not a
    terminal) it is a plain line after each movie converted or failed (:meth:`RunProgress.line`).
    The caller announces the movies with :meth:`start_run` and ends with :meth:`end_run`.

    Attributes:
        interactive: draw bars (``out`` is a terminal) instead of writing lines.
        page_bars: also draw the current movie's pages (not under MPI, where several ranks
            convert at once).
    """

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, interactive: bool | None = None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.interactive = self.out.isatty() if interactive is None else interactive
        self.page_bars = True
        self._warned: set[str] = set()  # a warning that names no movie is printed once per run
        self.in_progress: dict[Path, Job] = {}  # source -> job: started, not yet finished
        self.run_progress: RunProgress | None = None
        self._run_bar = None  # tqdm bars while they are shown
        self._page_bar = None

    # -- the run's progress ----------------------------------------------------------------------

    def start_run(self, sources: Sequence[Path]) -> None:
        """The movies this run will handle, in any order (their sizes are read now)."""
        self.end_run()
        self.run_progress = RunProgress.of(sources)
        if self.interactive and self.run_progress.n_movies:
            self._open_run_bar()

    def _open_run_bar(self) -> None:
        from tqdm import tqdm

        progress = self.run_progress
        self._run_bar = tqdm(
            total=progress.total_bytes, initial=progress.bytes_so_far, unit="B", unit_scale=True,
            unit_divisor=1000, file=self.out, position=0, leave=False, dynamic_ncols=True, mininterval=0.2,
            desc=f"movies {progress.done_movies}/{progress.n_movies}",
            # The rate and time left are RunProgress's (converted bytes over the time with work),
            # not tqdm's, which would count failed movies and --watch's waiting.
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}B of {total_fmt}B{postfix}",
        )
        self._run_bar.set_postfix_str(progress.rate_and_time_left(), refresh=False)

    def more_movies(self, sources: Sequence[Path]) -> None:
        """Movies found after :meth:`start_run` (``--watch``)."""
        if self.run_progress is None:
            self.run_progress = RunProgress.of([])
        self.run_progress.add(sources)
        if self.interactive and self._run_bar is None and self.run_progress.n_movies:
            self._open_run_bar()
        if self._run_bar is not None:
            self._run_bar.total = self.run_progress.total_bytes
            self._describe_run()
            self._run_bar.refresh()

    def end_run(self) -> None:
        """Remove the bars (before the summary)."""
        self._close_page_bar()
        if self._run_bar is not None:
            self._run_bar.close()
            self._run_bar = None

    def _describe_run(self) -> None:
        progress = self.run_progress
        self._run_bar.set_description_str(f"movies {progress.done_movies}/{progress.n_movies}", refresh=False)

    def _close_page_bar(self) -> None:
        if self._page_bar is not None:
            self._page_bar.close()
            self._page_bar = None

    def _run_advanced(self, source: Path, added_bytes: int, finished: bool, skipped: bool = False) -> None:
        if self._run_bar is not None:
            if finished:
                self._run_bar.total = self.run_progress.total_bytes  # a skipped or failed movie leaves it
                self._describe_run()
            self._run_bar.set_postfix_str(self.run_progress.rate_and_time_left(), refresh=False)
            self._run_bar.update(added_bytes)
        elif finished and not skipped and self.run_progress is not None:
            self._emit(self.run_progress.line(), self.out)

    def movie_done(self, result: MovieResult) -> None:
        """Count a finished movie in the run's progress."""
        if self.run_progress is None or result.source not in self.run_progress.nbytes_of:
            return
        skipped = result.status == "skipped"
        added = self.run_progress.movie_done(result.source, skipped=skipped, failed=result.status == "failed")
        self._run_advanced(result.source, added, finished=True, skipped=skipped)

    def _emit(self, text: str, stream: TextIO) -> None:
        """Print a line; with bars shown, above them."""
        if self._run_bar is not None or self._page_bar is not None:
            from tqdm import tqdm

            tqdm.write(text, file=stream)
            stream.flush()
        else:
            print(text, file=stream, flush=True)

    # -- Reporter ------------------------------------------------------------------------------

    def movie_started(self, job: Job, index: int, total: int) -> None:
        self.in_progress[job.source] = job
        self._emit(f"Processing {job.source} into {job.destination}", self.out)

    def page_done(self, job: Job, done: int, total: int) -> None:
        if self.run_progress is not None:
            self._run_advanced(job.source, self.run_progress.pages_done(job.source, done, total), finished=False)
        if not (self.interactive and self.page_bars):
            return
        if self._page_bar is None:
            from tqdm import tqdm

            self._page_bar = tqdm(total=total, unit="page", file=self.out, position=1, leave=False,
                                  dynamic_ncols=True, mininterval=0.2, desc=f"  {job.source.name}",
                                  bar_format="{desc}: {n_fmt}/{total_fmt} pages |{bar}|")
        self._page_bar.update(done - self._page_bar.n)

    def movie_finished(self, result: MovieResult) -> None:
        self.in_progress.pop(result.source, None)
        self._close_page_bar()
        for text in result.notes:
            self._emit(text, self.out)
        for text in result.warnings:
            self.warning(text)
        if result.status == "skipped":
            self._emit(f"Skipping already processed {result.source}", self.out)
        elif result.status == "failed":
            self._emit(f"ERROR: {result.message}", self.err)
        self.movie_done(result)

    def message(self, text: str) -> None:
        self._emit(text, self.out)

    def warning(self, text: str, repeat: bool = False) -> None:
        """``text`` on stderr, once per run unless ``repeat`` (a failure that came back)."""
        if text in self._warned and not repeat:
            return
        self._warned.add(text)
        self._emit(text, self.err)


def print_summary(
    results: Sequence[MovieResult], summary: Summary, out: TextIO, damaged_accepted: bool = False
) -> None:
    """The final table: one row per converted movie (up to 20), then the totals."""
    converted = [r for r in results if r.status == "converted"]
    print("", file=out)
    if converted and len(converted) <= 20:
        name_width = min(max(len(str(r.source)) for r in converted), 60)
        codec_width = max(9, max(len(r.codec) for r in converted))
        print(f"{'movie':<{name_width}}  {'pages':>5}  {'type':>7}  {'codec':>{codec_width}}  {'size %':>6}  {'MB/s':>7}", file=out)
        for r in converted:
            ratio = 100.0 * r.output_bytes / r.input_bytes if r.input_bytes else 0.0
            speed = r.input_bytes / 1e6 / r.seconds if r.seconds > 0 else 0.0
            name = str(r.source)
            if len(name) > name_width:
                name = "..." + name[-(name_width - 3):]
            print(f"{name:<{name_width}}  {r.n_pages:>5}  {r.dtype:>7}  {r.codec:>{codec_width}}  {ratio:>6.1f}  {speed:>7.1f}", file=out)
        print("", file=out)
    print(f"Movies converted: {summary.converted}, skipped: {summary.skipped}, failed: {summary.failed}", file=out)
    if summary.converted:
        print(f"Frames verified:  {summary.frames_verified}", file=out)
        print(f"Input:  {format_bytes(summary.input_bytes)}   Output: {format_bytes(summary.output_bytes)}"
              f"   ({summary.ratio_percent:.1f} % of the input)", file=out)
    print(f"Speed:  {summary.megabytes_per_second:.1f} MB/s of input   Wall time: {summary.wall_seconds:.1f} s", file=out)
    if summary.damaged_eer_frames:
        frames = summary.damaged_eer_frames
        movies = summary.movies_with_damaged_frames
        print(f"Damaged raw EER frames left out: {frames} in {movies} movie" + "s" * (movies != 1)
              + " (each named by a WARNING above)"
              + ("; accepted with --ignore_error" if damaged_accepted
                 else "; exit status 1 (--ignore_error accepts them)"), file=out)
    if summary.not_in_manifest:
        print(f"Not in the manifest: {summary.not_in_manifest} output" + "s" * (summary.not_in_manifest != 1)
              + " (each named by a WARNING above; --verify_only cannot check them once the originals are gone); "
              "exit status 1 (--only_do_unfinished converts them again and adds them)", file=out)
    if summary.failures:
        print("Failed movies:", file=out)
        for failure in summary.failures:
            print(f"  {failure.message}", file=out)
    out.flush()


# --------------------------------------------------------------------------- main


@dataclass
class CheckedOutputs:
    """The directories of a run's own files as the run checked them: ``--o`` (for movies.star
    and gain-reference.mrc) and the ``--report``'s, each None where not checked (a library
    caller: then checked when written; under MPI, rank 0's, and None on the other ranks). A
    directory replaced since (by a symbolic link, say) gets none of them, as the TIFFs are
    refused (:class:`cryotiff.io.atomic.CheckedDirectory`)."""

    output_dir: CheckedDirectory | None = None
    report_dir: CheckedDirectory | None = None


def run_conversion(
    inputs: Sequence[str],
    options: ConvertOptions,
    reporter: TerminalReporter,
    relative_to: Path | None = None,
    report_path: Path | None = None,
    control: PipelineControl | None = None,
    watch: WatchOptions | None = None,
) -> int:
    """Convert, then write ``<o>/movies.star`` (and, for RELION, ``RELION_OUTPUT_NODES.star``)
    and the ``--report``. A failed run still writes its report; one interrupted by Ctrl-C,
    SIGTERM or RELION's abort also the summary and ``movies.star`` of the movies that finished
    (:func:`finish_interrupted`). With ``watch`` (``--watch``), new movies are converted as
    they become complete, and ``movies.star`` and the report are rewritten after every movie."""
    started = time.perf_counter()
    started_ns = time.time_ns()  # a TIFF made by this run is newer (Interruption.of)
    collector = PipelineReporter(reporter, control)
    n_movies: int | None = None
    checked = CheckedOutputs(report_dir=checked_report_directory(report_path) if report_path is not None else None)
    records: WatchRecords | None = None  # a --watch's: also an interrupted watch says if movies.star is complete
    with _report_if_failed(report_path, options, inputs, lambda: latest_results(collector.results), checked):
        try:
            if watch is not None:
                checked.output_dir = make_output_dir(options)
                reporter.start_run([])
                from .watch import watch_and_convert

                records = WatchRecords(inputs, options, reporter, report_path, checked)
                results = watch_and_convert(inputs, options, watch, collector, on_result=records,
                                            output_directory=checked.output_dir)
                return finish_run(inputs, results, options, reporter, time.perf_counter() - started, report_path,
                                  control, checked=checked, watch_records=records)
            jobs, failures = plan(inputs, options, relative_to)
            n_movies = len(jobs) + len(failures)
            reporter.start_run([failure.source for failure in failures] + [job.source for job in jobs])
            for failure in failures:
                collector.movie_finished(failure)
            checked.output_dir = make_output_dir(options)
            results = failures + run(jobs, options, collector, checked.output_dir)
        except (KeyboardInterrupt, JobAborted) as stop:
            so_far = latest_results(collector.results)  # one per movie, also one converted again by --watch
            interruption = Interruption.of(stop, list(reporter.in_progress.values()), n_movies, len(so_far),
                                           started_ns)
            status = finish_interrupted(
                lambda: finish_run(inputs, so_far, options, reporter, time.perf_counter() - started,
                                   report_path, control, interruption=interruption, checked=checked,
                                   watch_records=records))
            if isinstance(stop, JobAborted):
                raise  # main() writes RELION_JOB_EXIT_ABORTED
            return status
    return finish_run(inputs, results, options, reporter, time.perf_counter() - started, report_path, control,
                      checked=checked)


def make_output_dir(options: ConvertOptions) -> CheckedDirectory:
    """Make ``--o`` and return it as checked now."""
    try:
        options.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"{options.output_dir}: cannot create the output directory ({exc.strerror})") from None
    try:
        return CheckedDirectory(options.output_dir, options.output_dir)
    except OutputError as exc:
        raise OptionError(str(exc)) from None


class WatchRecords:
    """During a ``--watch`` run, after every movie: ``<o>/movies.star`` and the ``--report``
    (``state`` ``watching``) of the movies so far, so that the next step of a pipeline can start
    on them. A file that cannot be written is a warning when it starts failing, not after every
    movie of a watch that may run for hours; it is tried again after every movie, a line says
    when it is written again, and :meth:`end_line` says at the end whether movies.star is
    complete. The run goes on either way."""

    def __init__(self, inputs: Sequence[str], options: ConvertOptions, reporter: TerminalReporter,
                 report_path: Path | None, checked: CheckedOutputs | None = None):
        self.inputs, self.options, self.reporter, self.report_path = inputs, options, reporter, report_path
        self.checked = checked or CheckedOutputs()
        self.failing: set[str] = set()  # the files that could not be written the last time
        self.spells: dict[str, int] = {}  # how many times each file started failing
        self.movies_star_failed = False  # at some time during the watch
        self.movies_done_when_listed: int | None = None  # at movies.star's last writing

    def __call__(self, results: Sequence[MovieResult]) -> None:
        results = list(results)
        movies_star = self.options.output_dir / MOVIES_STAR_NAME
        outcome = self._attempt(movies_star, lambda: write_movies_star(
            self.inputs, results, self.options.output_dir, self.options.eer_upsampling, self.checked.output_dir))
        if outcome is not None:
            self.movies_done_when_listed = len(results)
        else:
            self.movies_star_failed = True
        if self.report_path is not None:
            self._attempt(self.report_path, lambda: write_report(
                self.report_path, results, self.options, self.inputs, None, EXIT_OK, state="watching",
                movies_star=outcome.path if outcome is not None else None, directory=self.checked.report_dir))

    def _attempt(self, path: Path, write: Callable[[], object]):
        """``write()``'s answer, or None after a failure (warned about if it is a new one)."""
        key = str(path)
        try:
            answer = write()
        except CryotiffError as exc:
            if key not in self.failing:
                self.failing.add(key)
                self.spells[key] = self.spells.get(key, 0) + 1
                text = f"WARNING: {exc}; it is tried again after every movie (not said again until it is written)"
                if self.spells[key] == 1:
                    self.reporter.warning(text)
                else:  # the same text as the first spell's, which the reporter would hold back
                    self.reporter.warning(text, repeat=True)
            return None
        if key in self.failing:
            self.failing.discard(key)
            listed = getattr(answer, "n_movies", None)
            written = getattr(answer, "path", None) or path
            self.reporter.message(f"{written} written again" + (
                f", listing {listed} movie" + "s" * (listed != 1) if listed is not None else ""))
        return answer

    def end_line(self, movies_star: Path | None, written: bool, n_movies: int) -> str | None:
        """After the watch's last writing of movies.star (``written``: it succeeded; ``movies_star``:
        its path): whether it lists every movie of the watch (``n_movies``), if that is in doubt
        (it failed then, or at some time during the watch); else None."""
        path = movies_star or self.options.output_dir / MOVIES_STAR_NAME
        if written and self.movies_star_failed:
            return (f"{path} is complete: it lists every movie of this watch (it could not be written for a while "
                    "during the watch)")
        if written:
            return None
        if self.movies_done_when_listed is None:
            return (f"WARNING: {path} is not complete: it could not be written during this watch; run the same "
                    "command again with --only_do_unfinished to list its movies")
        return (f"WARNING: {path} is not complete: it was last written when {self.movies_done_when_listed} of the "
                f"{n_movies} movies of this watch were done; run the same command again with --only_do_unfinished "
                "to list them all")


@dataclass
class Interruption:
    """A run stopped before its end: by Ctrl-C or SIGTERM, by RELION's abort, or (under MPI)
    because a rank died.

    Attributes:
        state: the ``--report``'s ``state``: ``interrupted``, ``aborted`` or ``error``.
        exit_status: 130 after Ctrl-C or SIGTERM; 1 otherwise.
        removed: the movies being written when it stopped; their partial files were removed.
        left_behind: movies being written by a rank that died or was killed before it removed its
            partial file: no ``.tif``, but a partial file may remain.
        n_left: movies neither converted, skipped nor failed (None: stopped before the inputs
            were listed).
        reason: the first line to print (and the report's ``error``), when it was not Ctrl-C.
        reason_printed: the reason was printed already (by rank 0's service thread, at once).
        urgent: print these lines before the summary, not after it: under MPI the ranks may be
            killed a fraction of a second after the signal.
        unlisted: movies whose TIFF was put in place (complete) as the run stopped, without a
            result (interrupted just after the rename; under MPI, a result that did not reach
            rank 0 in time): not in ``movies.star`` nor the report.
    """

    state: str
    exit_status: int
    removed: list[Job]
    n_left: int | None
    reason: str = ""
    left_behind: list[Job] = field(default_factory=list)
    reason_printed: bool = False
    urgent: bool = False
    unlisted: list[Job] = field(default_factory=list)

    @classmethod
    def of(cls, stop: BaseException, removed: Sequence[Job], n_movies: int | None, n_done: int,
           started_ns: int | None = None) -> Interruption:
        """After KeyboardInterrupt (Ctrl-C, SIGTERM) or RELION's abort. ``removed``: the movies
        being converted; one whose TIFF is in place, made since ``started_ns`` (the run's
        start, ``time.time_ns()``), was interrupted just after its rename: it is unlisted."""
        unlisted = [job for job in removed if started_ns is not None and _made_since(job.destination, started_ns)]
        removed = [job for job in removed if job not in unlisted]
        n_left = None if n_movies is None else max(n_movies - n_done - len(unlisted), 0)
        if isinstance(stop, JobAborted):
            return cls("aborted", EXIT_FAILED, list(removed), n_left, f"Aborted: {stop}.", unlisted=unlisted)
        return cls("interrupted", EXIT_INTERRUPTED, list(removed), n_left, unlisted=unlisted)

    def lines(self) -> list[str]:
        """What the user reads last: why, what was removed and how to go on."""
        lines = [self.reason] if self.reason and not self.reason_printed else []
        prefix = "" if self.reason else "Interrupted: "
        lines += [f"{prefix}{job.source} was being converted; its partial {job.destination} was removed."
                  for job in self.removed]
        lines += [f"{prefix}{job.source} was being converted by a rank that stopped before it could remove its "
                  f"partial file; {job.destination} was not written (a partial file may remain until the movie is "
                  "converted again)." for job in self.left_behind]
        lines += [f"{prefix}{job.source} was converted as the run stopped: {job.destination} is complete, but not "
                  "listed in movies.star nor in the report; run the same command again with --only_do_unfinished to "
                  "list it (or convert it again, if its manifest line is missing)." for job in self.unlisted]
        if not self.removed and not self.left_behind and not self.unlisted:
            lines.append(("Stopped" if self.reason else "Interrupted") + " between movies: no file was half-written.")
        if self.n_left is None:
            lines.append("Run the same command again with --only_do_unfinished to convert the movies.")
        elif self.n_left:
            lines.append(f"{self.n_left} movie" + "s were" * (self.n_left != 1) + " was" * (self.n_left == 1)
                         + " not converted: run the same command again with --only_do_unfinished to convert "
                         + ("them" if self.n_left != 1 else "it") + " (the complete ones are skipped).")
        return lines


def _made_since(path: Path, started_ns: int) -> bool:
    """A complete output at ``path`` (a file with no temporary file of a writer beside it),
    modified since ``started_ns``."""
    from .io.atomic import temporaries_of

    try:
        status = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISREG(status.st_mode) and status.st_mtime_ns >= started_ns and not temporaries_of(Path(path))


def finish_interrupted(finish: Callable[[], int]) -> int:
    """Run ``finish`` (the summary, ``movies.star``, the report of an interrupted run) with
    Ctrl-C and SIGTERM held back (and a SIGHUP only silencing the terminal that closed), so that pressing Ctrl-C again does not cut them short; they
    take well under a second. Returns what ``finish`` returns."""
    if threading.current_thread() is not threading.main_thread():
        return finish()
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in held}
    if callable(signal.getsignal(signal.SIGHUP)):  # the terminal closing now: silenced, the writing goes on
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, hangup.while_held)
    try:
        return finish()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def finish_run(
    inputs: Sequence[str],
    results: list[MovieResult],
    options: ConvertOptions,
    reporter: TerminalReporter,
    wall_seconds: float,
    report_path: Path | None = None,
    control: PipelineControl | None = None,
    extra_lines: Sequence[str] = (),
    interruption: Interruption | None = None,
    checked: CheckedOutputs | None = None,
    watch_records: WatchRecords | None = None,
) -> int:
    """After a conversion run (also rank 0 of ``convert-to-tiff-mpi``), also one that was
    interrupted (``interruption``): what was interrupted, ``<o>/movies.star`` (and
    RELION_OUTPUT_NODES.star for a pipeline job), the summary, ``extra_lines``, the
    ``--report``. Returns the exit status. ``checked``: where they go, as the run checked it;
    ``watch_records``: the end of a ``--watch``, which then says whether movies.star is complete
    where that is in doubt."""
    checked = checked or CheckedOutputs()
    reporter.end_run()
    summary = summarise(results, wall_seconds)
    damaged_unaccepted = summary.damaged_eer_frames and not options.ignore_error
    status = EXIT_FAILED if summary.failed or damaged_unaccepted or summary.not_in_manifest else EXIT_OK
    fields: dict = {}
    if interruption is not None:
        status = interruption.exit_status
        fields.update(state=interruption.state, error=interruption.reason or None)
        if interruption.urgent:
            _print_lines(interruption.lines(), reporter.err)
    movies_star = None
    movies_star_written = False
    try:
        outcome = write_movies_star(inputs, results, options.output_dir, options.eer_upsampling, checked.output_dir)
        movies_star_written = True
        for text in outcome.warnings:
            reporter.warning(f"WARNING: {text}")
        movies_star = outcome.path
        if movies_star is not None:
            earlier = f" ({outcome.n_from_earlier} from earlier runs)" if outcome.n_from_earlier else ""
            reporter.message(f"Written {movies_star} listing {outcome.n_movies} movie" + "s" * (outcome.n_movies != 1)
                             + earlier + ("" if outcome.has_optics else " (no optics table: no input STAR file had one)"))
            if control is not None:
                control.write_output_nodes(movies_star)
    except CryotiffError as exc:
        print(f"ERROR: {exc}", file=reporter.err, flush=True)
        status = EXIT_FAILED if interruption is None else status
    if watch_records is not None:
        line = watch_records.end_line(movies_star, movies_star_written, len(results))
        if line is not None:
            print(line, file=reporter.err if line.startswith("WARNING") else reporter.out, flush=True)
    print_summary(results, summary, reporter.out, damaged_accepted=options.ignore_error)
    _print_lines(extra_lines, reporter.out)
    if interruption is not None and not interruption.urgent:
        _print_lines(interruption.lines(), reporter.err)
    return _with_report(report_path, results, options, inputs, summary, status, reporter, movies_star=movies_star,
                        directory=checked.report_dir, **fields)


def _print_lines(lines: Sequence[str], stream: TextIO) -> None:
    for line in lines:
        print(line, file=stream)
    stream.flush()


def _with_report(report_path: Path | None, results, options, inputs, summary, status: int,
                 reporter: TerminalReporter, **fields) -> int:
    """Write the ``--report`` of a finished run (if asked for); the exit status, 1 if that fails."""
    if report_path is not None:
        try:
            write_report(report_path, results, options, inputs, summary, status, **fields)
        except CryotiffError as exc:
            print(f"ERROR: {exc}", file=reporter.err, flush=True)
            return EXIT_FAILED
    return status


@contextlib.contextmanager
def _report_if_failed(
    report_path: Path | None, options: ConvertOptions, inputs: Sequence[str],
    results_so_far: Callable[[], Sequence[MovieResult]], checked: CheckedOutputs | None = None,
) -> Iterator[None]:
    """Around a run: if an error stops it, write the ``--report`` with ``state`` ``error`` and
    the movies done so far, then let the exception go on. Writing it must not hide the reason,
    so its own failure is only printed. (An interrupted run writes its own, with its summary.)
    An unexpected error (a bug: not a :class:`CryotiffError`) writes it too, as
    ``convert-to-tiff-mpi``'s rank 0 does, so that a script reading the report never takes a
    crashed run for one still going."""
    try:
        yield
    except Exception as exc:
        if report_path is not None:
            if isinstance(exc, CryotiffError):
                status, error = (EXIT_USAGE if isinstance(exc, OptionError) else EXIT_FAILED), str(exc)
            else:
                status, error = EXIT_FAILED, f"unexpected error: {type(exc).__name__}: {exc}"
            try:
                write_report(report_path, results_so_far(), options, inputs, None, status, state="error", error=error,
                             directory=checked.report_dir if checked is not None else None)
            except CryotiffError as report_error:
                print(f"ERROR: {report_error}", file=sys.stderr, flush=True)
        raise


def run_estimation(
    inputs: Sequence[str],
    options: ConvertOptions,
    reporter: TerminalReporter,
    relative_to: Path | None = None,
    report_path: Path | None = None,
) -> int:
    """``--estimate_gain``: update the gain estimate over every movie; writes no TIFF. A failed
    run still writes its ``--report``; an interrupted one also its summary."""
    from .jobs import estimate

    started = time.perf_counter()
    collector = PipelineReporter(reporter)
    checked = CheckedOutputs(report_dir=checked_report_directory(report_path) if report_path is not None else None)
    with _report_if_failed(report_path, options, inputs, lambda: collector.results, checked):
        try:
            jobs, failures = plan(inputs, options, relative_to)
            reporter.start_run([failure.source for failure in failures] + [job.source for job in jobs])
            for failure in failures:
                collector.movie_finished(failure)
            results = failures + estimate(jobs, options, collector)
        except KeyboardInterrupt:
            lines = [f"Interrupted: the estimate of the movies that finished is in {options.output_dir} "
                     "(gain_estimate.bin); to go on, run --estimate_gain on the other movies with "
                     f"--gain {options.output_dir / 'gain_estimate.bin'}."]
            return finish_interrupted(
                lambda: finish_estimation(inputs, collector.results, options, reporter, time.perf_counter() - started,
                                          report_path, interrupted_lines=lines, checked=checked))
    return finish_estimation(inputs, results, options, reporter, time.perf_counter() - started, report_path,
                             estimate_lines(inputs, options, saved_estimate(options)), checked=checked)


def saved_estimate(options: ConvertOptions):
    """The gain estimate a finished ``--estimate_gain`` saved in ``--o`` (None if none was)."""
    from .gain import GAIN_ESTIMATE_NAME, GainEstimate

    path = options.output_dir / GAIN_ESTIMATE_NAME
    try:
        return GainEstimate.load(path) if path.is_file() else None
    except CryotiffError:
        return None


def estimate_lines(inputs: Sequence[str], options: ConvertOptions, estimate, program: str = "convert-to-tiff") -> list[str]:
    """After ``--estimate_gain``: how many pixels are still unreliable and the command that
    converts the movies with the estimate (RELION prints neither)."""
    import shlex

    if estimate is None:
        return []
    from .gain import GAIN_ESTIMATE_NAME

    n_unreliable, n_pixels = estimate.n_unreliable(options.thresh), int(estimate.gain.size)
    command = [program, "--i", *inputs, "--o", str(options.output_dir),
               "--gain", str(options.output_dir / GAIN_ESTIMATE_NAME)]
    if options.thresh != 50:
        command += ["--thresh", str(options.thresh)]
    if options.threads > 1:
        command += ["--j", str(options.threads)]
    return [
        f"Unreliable pixels: {n_unreliable} of {n_pixels} ({100.0 * n_unreliable / n_pixels:.3g} %) have fewer than "
        f"{options.thresh} consistent observations (--thresh); converting copies their values as float. "
        "Estimating on more movies makes more of them reliable.",
        "Next, convert the movies with the estimate:",
        "  " + shlex.join(command),
    ]


def finish_estimation(
    inputs: Sequence[str],
    results: list[MovieResult],
    options: ConvertOptions,
    reporter: TerminalReporter,
    wall_seconds: float,
    report_path: Path | None = None,
    extra_lines: Sequence[str] = (),
    save_error: str | None = None,
    interrupted_lines: Sequence[str] | None = None,
    checked: CheckedOutputs | None = None,
) -> int:
    """After ``--estimate_gain`` (also rank 0 of ``convert-to-tiff-mpi``): the summary,
    ``extra_lines``, the ``--report`` (its ``totals.converted`` counts the movies whose frames
    went into the estimate; into its directory as ``checked``). ``save_error``: the estimate
    could not be saved. ``interrupted_lines``: the run was interrupted (exit status 130);
    printed last. Returns the exit status."""
    reporter.end_run()
    summary = summarise(results, wall_seconds)
    out = reporter.out
    print(f"\nMovies estimated: {summary.converted}, failed: {summary.failed}; "
          f"frames: {sum(r.n_pages for r in results)}; wall time {summary.wall_seconds:.1f} s", file=out)
    if summary.not_in_manifest:
        print(f"Not in the manifest: {summary.not_in_manifest} output" + "s" * (summary.not_in_manifest != 1)
              + " (each named by a WARNING above; --verify_only cannot check them once the originals are gone); "
              "exit status 1 (--only_do_unfinished converts them again and adds them)", file=out)
    if summary.failures:
        print("Failed movies:", file=out)
        for failure in summary.failures:
            print(f"  {failure.message}", file=out)
    for line in extra_lines:
        print(line, file=out)
    out.flush()
    status = EXIT_FAILED if summary.failed or save_error else EXIT_OK
    fields: dict = {"error": save_error}
    if interrupted_lines is not None:
        for line in interrupted_lines:
            print(line, file=reporter.err, flush=True)
        status, fields["state"] = EXIT_INTERRUPTED, "interrupted"
    return _with_report(report_path, results, options, inputs, summary, status, reporter,
                        directory=checked.report_dir if checked is not None else None, **fields)


def run_demo(options: ConvertOptions, reporter: TerminalReporter) -> int:
    """``--demo``: write the synthetic movies into ``<o>/demo_movies``, convert each kind with its
    user-guide recipe into ``<o>/converted/<kind>/``, then list every movie and its output."""
    import dataclasses

    from .demo import demo_recipes

    demo_dir = options.output_dir / "demo_movies"
    reporter.message(f"Writing synthetic demo movies into {demo_dir}")
    recipes = demo_recipes(demo_dir, options.output_dir / "converted")
    status = EXIT_OK
    for recipe in recipes:
        inputs = [str(movie.path) for movie in recipe.movies]
        step = dataclasses.replace(options, output_dir=recipe.output_dir, gain=recipe.gain, estimate_gain=False)
        reporter.message(f"\n=== {recipe.title}")
        if recipe.estimate_gain:
            status = max(status, run_estimation(inputs, dataclasses.replace(step, estimate_gain=True), reporter, demo_dir))
            step = dataclasses.replace(step, gain=recipe.output_dir / "gain_estimate.bin")
        status = max(status, run_conversion(inputs, step, reporter, demo_dir))
    lines = ["", f"The demo movies (in {demo_dir}) and their conversions:"]
    for recipe in recipes:
        for movie in recipe.movies:
            given = f" with {recipe.gain.name}" if recipe.gain is not None else ""
            gain_note = (f"gain reference {recipe.output_dir / 'gain-reference.mrc'}"
                         if recipe.writes_gain_reference else movie.gain_note)
            lines.append(f"  {movie.path.name}{given} ({movie.description})")
            lines.append(f"      -> {recipe.output_dir / movie.path.with_suffix('.tif').name}; {gain_note}")
    lines.append("Which gain file and flags to use in RELION, MotionCor2/3, cryoSPARC and Warp: "
                 "docs/after-conversion.md")
    for line in lines:
        reporter.message(line)
    return status


def run_dry_run(
    inputs: Sequence[str],
    options: ConvertOptions,
    reporter: TerminalReporter,
    relative_to: Path | None = None,
    report_path: Path | None = None,
) -> int:
    """``--dry_run``: what would be converted or skipped and the expected size; writes no TIFF.
    The exit status is 1 when some movie cannot be converted. The report goes into its
    directory as the run checked it when it started."""
    report_dir = checked_report_directory(report_path) if report_path is not None else None
    dry_run = plan_dry_run(inputs, options, relative_to)
    for line in format_dry_run(dry_run):
        print(line, file=reporter.out)
    reporter.out.flush()
    status = EXIT_FAILED if dry_run.count("fail") else EXIT_OK
    if report_path is not None:
        write_dry_run_report(report_path, dry_run, options, inputs, status, directory=report_dir)
    return status


#: Modes that cannot go with --check_gain: argparse dest -> option name.
CHECK_GAIN_CONFLICTS = {
    "estimate_gain": "--estimate_gain",
    "dry_run": "--dry_run",
    "demo": "--demo",
    "benchmark": "--benchmark",
    "pipeline_control": "--pipeline_control",
}


def check_gain_conflict(args: argparse.Namespace) -> str | None:
    """Why ``--check_gain`` cannot run with these options, or None. The TIFF writing options
    (--compression, --j, ...) are accepted and have no effect: it converts nothing."""
    for name, option in CHECK_GAIN_CONFLICTS.items():
        if getattr(args, name, None) not in (None, False):
            return f"--check_gain converts nothing and cannot be combined with {option}"
    if not args.gain:
        return "--check_gain needs --gain: the gain reference to check"
    return None


def run_check_gain(inputs: Sequence[str], options: ConvertOptions, reporter: TerminalReporter,
                   report_path: Path | None = None) -> int:
    """``--check_gain``: print the score table and the answer, write ``<o>/gain-reference.mrc``
    when the movies tell, and the ``--report``. Exit status 0 with an answer, 1 when the movies
    cannot tell or a movie could not be read. gain-reference.mrc and the report go into their
    directories as the check found them when it started (a directory replaced since gets
    nothing)."""
    from .gain_check.check import check_gain, checked_output_directory, write_gain_reference
    from .gain_check.text import format_result
    from .report import write_check_gain_report

    report_dir = checked_report_directory(report_path) if report_path is not None else None
    try:
        output_dir = checked_output_directory(options.output_dir)
        result = check_gain(inputs, options, reporter)
    except KeyboardInterrupt:  # nothing is written before the answer
        print("\nInterrupted; nothing was written.", file=reporter.err, flush=True)
        return EXIT_INTERRUPTED
    except CryotiffError as exc:
        if report_path is not None:
            status = EXIT_USAGE if isinstance(exc, OptionError) else EXIT_FAILED
            with contextlib.suppress(CryotiffError):
                write_check_gain_report(report_path, None, options, inputs, status, error=str(exc),
                                        directory=report_dir)
        raise
    for movie, message in result.failed:
        print(f"ERROR: {message}", file=reporter.err, flush=True)
    for text in result.warnings:
        reporter.warning(text)
    status = EXIT_OK if result.decided and not result.failed else EXIT_FAILED
    reference, written, error = None, False, None
    if result.decided:
        try:
            reference, written = write_gain_reference(result, options.output_dir, output_dir)
        except CryotiffError as exc:
            error, status = str(exc), EXIT_FAILED
    print("", file=reporter.out)
    for line in format_result(result, reference, written):
        print(line, file=reporter.out)
    reporter.out.flush()
    if error:
        print(f"ERROR: {error}", file=reporter.err, flush=True)
    if report_path is not None:
        try:
            write_check_gain_report(report_path, result.report_section(reference), options, inputs, status, error,
                                    directory=report_dir)
        except CryotiffError as exc:
            print(f"ERROR: {exc}", file=reporter.err, flush=True)
            status = EXIT_FAILED
    return status


def run_benchmark(inputs: Sequence[str] | None, options: ConvertOptions, reporter: TerminalReporter) -> int:
    """``--benchmark``: the codec table for the given movies, or for the demo movies."""
    import tempfile

    from .benchmark import benchmark_codecs, format_benchmark_table
    from .inputs import expand_inputs

    with tempfile.TemporaryDirectory(prefix="cryotiff-benchmark-") as scratch:
        if inputs:
            movies = expand_inputs(inputs)
        else:
            from .demo import make_demo_movies

            reporter.message("No --i given: benchmarking the synthetic demo movies")
            movies = make_demo_movies(Path(scratch))
        rows = benchmark_codecs(movies, options)
        print(format_benchmark_table(rows), file=reporter.out)
    return EXIT_FAILED if any(row.error for row in rows) else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``convert-to-tiff``; returns the exit status.

    With ``--pipeline_control DIR`` (a RELION External job) every way out, including a rejected
    command line, Ctrl-C and RELION's abort, leaves RELION's exit file in DIR.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    control_dir = pipeline_control_from_argv(argv)
    if control_dir is None:
        return run_command(argv)
    control = PipelineControl(control_dir)
    control.start()
    status, aborted = EXIT_FAILED, False
    try:
        status = run_command(argv)
    except SystemExit as exc:  # argparse: --help and --version (0), a rejected command line (2)
        status = exc.code if isinstance(exc.code, int) else EXIT_USAGE
        raise
    except JobAborted:  # run_conversion has printed what was removed and written the summary
        aborted = True
    finally:
        try:
            control.finish(status, aborted=aborted)
        except CryotiffError as exc:
            print(f"ERROR: {exc}; RELION is not told that the job ended", file=sys.stderr, flush=True)
    return status


def _terminate_like_ctrl_c(signum, frame) -> None:
    """SIGTERM (batch schedulers, ``kill``) cleans up as Ctrl-C does: the movie being written
    is removed and the exit status is 130."""
    raise KeyboardInterrupt


def run_command(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run it; returns the exit status."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate_like_ctrl_c)
    names_never_fail_to_print()
    hangup.stop_on_hangup()
    parser = build_parser()
    args = parser.parse_args(argv)
    reporter = TerminalReporter()
    try:
        options = options_from_args(args)
        watch = watch_from_args(args)
        if args.verify_only:
            problem = verify_conflict(args)
            if problem:
                raise OptionError(problem)
            return run_verify(args.i, options, reporter)
        if args.check_gain:
            problem = check_gain_conflict(args)
            if problem:
                raise OptionError(problem)
            if not args.i:
                parser.error("the following arguments are required: --i")
            return run_check_gain(args.i, options, reporter, Path(args.report) if args.report else None)
        codec_warning = opt_in_warning(options.compression)  # once per run, before any movie
        if codec_warning:
            reporter.warning(codec_warning)
        if args.benchmark:
            return run_benchmark(args.i, options, reporter)
        if args.demo:
            given = [name for name, value in (("--i", args.i), ("--gain", args.gain), ("--estimate_gain", args.estimate_gain),
                                              ("--dry_run", args.dry_run), ("--report", args.report),
                                              ("--pipeline_control", args.pipeline_control is not None)) if value]
            if given:
                raise OptionError(f"--demo runs its own recipes on its own movies; it does not take {', '.join(given)}")
            return run_demo(options, reporter)
        relative_to = None
        if not args.i:
            parser.error("the following arguments are required: --i")
        inputs = args.i
        problem = option_conflicts(options)
        if problem:
            raise OptionError(problem)
        report_path = Path(args.report) if args.report else None
        if report_path is not None:
            check_report_path(report_path)  # before any movie: an input there must not be replaced at the end
            gone = mark_a_gone_watch(report_path)
            if gone:
                reporter.message(gone)
        if args.dry_run:  # before --estimate_gain: a dry run never writes (it refuses --estimate_gain)
            return run_dry_run(inputs, options, reporter, relative_to, report_path)
        if options.estimate_gain:
            return run_estimation(inputs, options, reporter, relative_to, report_path)
        control = None
        if args.pipeline_control is not None:  # "" (given without a directory): the job directory --o
            control = PipelineControl(Path(args.pipeline_control or args.o))
        return run_conversion(inputs, options, reporter, relative_to, report_path, control, watch)
    except OptionError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CryotiffError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # outside a conversion (which says what it removed)
        print("\nInterrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into "head" and the like
        sys.stderr.close()
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
