"""Fitting into RELION pipelines: ``<o>/movies.star``, External-job exit files, ``--report`` and
``--dry_run``.

* :func:`write_movies_star` lists the converted movies so that re-import is one step: the input
  STAR file's optics table is kept, ``rlnMicrographMovieName`` points to the ``.tif`` files, and
  only movies that converted (or were already complete) are listed.
* :class:`PipelineControl` is RELION's External-job contract (``pipeline_control.cpp``): one of
  ``RELION_JOB_EXIT_SUCCESS`` / ``RELION_JOB_EXIT_FAILURE`` / ``RELION_JOB_EXIT_ABORTED`` is
  written in the ``--pipeline_control`` directory when the program ends, ``RELION_JOB_ABORT_NOW``
  (the GUI's "Abort" button) is obeyed between pages, and ``RELION_OUTPUT_NODES.star`` names the
  output ``movies.star`` so that the pipeliner offers it to the next job.
* :func:`write_report` writes ``--report FILE.json``; :func:`plan_dry_run` is ``--dry_run``.

Like the rest of the library this module never prints: it returns what happened and the CLI
prints it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import __version__
from .codecs import resolve_codec
from .convert import MOVIE_SUFFIXES, ConvertOptions, MovieResult, open_page_source
from .errors import CryotiffError, OptionError, OutputError
from .io.star import MOVIE_NAME_COLUMN, movie_table_name, read_star_blocks
from .io.tiff import flip_rows
from .jobs import Job, Reporter, Summary, is_finished, plan, prepare

MOVIES_STAR_NAME = "movies.star"

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

#: ``--eer_upsampling`` -> TIFF pixel size / physical pixel size.
EER_PIXEL_SIZE_FACTOR = {1: 1.0, 2: 0.5, 3: 0.25, -1: 2.0}

#: Optics columns that hold a pixel size of the movie as written (scaled for up-sampled EER).
OPTICS_PIXEL_SIZE_COLUMNS = ("rlnMicrographOriginalPixelSize",)

#: Movies whose first page is encoded to estimate the output size in a dry run.
DRY_RUN_SAMPLED_MOVIES = 8

#: TIFF bytes per page besides strip data (IFD of ~15 tags, their values, alignment).
TIFF_PAGE_OVERHEAD_BYTES = 256
#: TIFF bytes per strip besides its data (StripOffsets and StripByteCounts entries).
TIFF_STRIP_OVERHEAD_BYTES = 8


# --------------------------------------------------------------------------- movies.star


@dataclass
class MoviesStarOutcome:
    """What :func:`write_movies_star` did.

    Attributes:
        path: the STAR file written, or None when none was written.
        n_movies: movies listed in it.
        has_optics: whether it carries an optics table (from the input STAR file).
        warnings: things the user should know (printed by the CLI).
    """

    path: Path | None
    n_movies: int = 0
    has_optics: bool = False
    warnings: list[str] = field(default_factory=list)


def _as_dataframe(table: Any):
    """A STAR table as a DataFrame (starfile returns one-row key/value blocks as dicts)."""
    import pandas as pd

    if hasattr(table, "columns"):
        return table
    return pd.DataFrame([dict(table)])


def _star_inputs(inputs: Sequence[str]) -> list[Path]:
    """The ``--i`` arguments that jobs.expand_inputs reads as movie STAR files (same rule)."""
    return [Path(argument) for argument in inputs if Path(argument).suffix == ".star" and not Path(argument).is_dir()]


def _is_eer(movie: Path) -> bool:
    return MOVIE_SUFFIXES.get(movie.suffix.lower()) == "eer"


def write_movies_star(
    inputs: Sequence[str],
    results: Iterable[MovieResult],
    output_dir: Path,
    eer_upsampling: int = 1,
) -> MoviesStarOutcome:
    """Write ``<output_dir>/movies.star`` listing the movies that converted or were already
    complete, with ``rlnMicrographMovieName`` pointing to their ``.tif`` files (named as the
    movies are: relative to the current directory unless ``--o`` is absolute).

    * Movies from an input STAR file keep every column of their row (``rlnOpticsGroup`` ...),
      and the optics table of the first input STAR file that has one is copied (a later input
      STAR file with a different optics table gives a warning).
    * Movies from other inputs (files, lists, globs, directories) get ``rlnMicrographMovieName``
      only; with an optics table of exactly one group they are put in that group, with several
      groups they cannot be assigned and are left out, with a warning.
    * Without any input STAR file the result has no optics table (``data_movies`` only): give
      RELION's Import ``movies.star`` as ``--i`` to keep the optics, or import the ``.tif`` files.
    * For EER movies rendered with ``--eer_upsampling`` other than 1, the optics group's
      ``rlnMicrographOriginalPixelSize`` is scaled to the rendered grid (when all its movies are
      EER), because the TIFF pixels are no longer the physical ones.

    Nothing is written when no movie is listed, or when the file would overwrite an input STAR
    file (a warning says so).

    Raises:
        OutputError: the file cannot be written.
        StarFormatError: an input STAR file can no longer be read.
    """
    import pandas as pd

    listed = [r for r in results if r.status in ("converted", "skipped") and r.destination is not None]
    destination = output_dir / MOVIES_STAR_NAME
    outcome = MoviesStarOutcome(path=None)
    if not listed:
        return outcome
    star_paths = _star_inputs(inputs)
    for star_path in star_paths:
        if destination.exists() and star_path.exists() and os.path.samefile(destination, star_path):
            outcome.warnings.append(
                f"{destination} was not written: it is the input STAR file; choose another --o"
            )
            return outcome

    # Rows of the input STAR files, by movie path (the key jobs.expand_inputs uses).
    optics = None
    optics_source: Path | None = None
    rows: dict[Path, dict[str, Any]] = {}
    columns: list[str] = [MOVIE_NAME_COLUMN]
    for star_path in star_paths:
        blocks = read_star_blocks(star_path)
        table_name = movie_table_name(blocks)
        movies_table = _as_dataframe(blocks[table_name])
        if "optics" in blocks and table_name != "optics":
            this_optics = _as_dataframe(blocks["optics"])
            if optics is None:
                optics, optics_source = this_optics, star_path
            elif not this_optics.equals(optics):
                outcome.warnings.append(
                    f"{destination}: the optics table of {star_path} differs from that of "
                    f"{optics_source}; only the latter is kept"
                )
        for column in movies_table.columns:
            if column not in columns:
                columns.append(column)
        for record in movies_table.to_dict("records"):
            name = str(record.get(MOVIE_NAME_COLUMN, "")).strip()
            if name:
                rows.setdefault(Path(name), record)

    single_group = None
    if optics is not None and "rlnOpticsGroup" in optics.columns and len(optics) == 1:
        single_group = optics["rlnOpticsGroup"].iloc[0]
    records = []
    left_out = []
    for result in listed:
        record = dict(rows.get(result.source, {}))
        if not record and optics is not None:
            if single_group is None:
                left_out.append(result.source)
                continue
            record["rlnOpticsGroup"] = single_group
        record[MOVIE_NAME_COLUMN] = str(result.destination)
        records.append(record)
    if left_out:
        outcome.warnings.append(
            f"{destination}: {len(left_out)} movie(s) not from the input STAR file (for example "
            f"{left_out[0]}) are left out: their optics group is unknown"
        )
    if not records:
        return outcome
    if "rlnOpticsGroup" in {key for record in records for key in record} and "rlnOpticsGroup" not in columns:
        columns.append("rlnOpticsGroup")
    movies = pd.DataFrame(records)
    movies = movies[[column for column in columns if column in movies.columns]]

    blocks_out: dict[str, Any] = {}
    if optics is not None:
        optics = optics.copy()
        factor = EER_PIXEL_SIZE_FACTOR.get(eer_upsampling, 1.0)
        if factor != 1.0 and "rlnOpticsGroup" in optics.columns and "rlnOpticsGroup" in movies.columns:
            eer_of_group: dict[Any, list[bool]] = {}
            for result, record in zip((r for r in listed if r.source not in left_out), records):
                eer_of_group.setdefault(record.get("rlnOpticsGroup"), []).append(_is_eer(result.source))
            for group, flags in eer_of_group.items():
                if flags and all(flags):
                    selected = optics["rlnOpticsGroup"] == group
                    for column in OPTICS_PIXEL_SIZE_COLUMNS:
                        if column in optics.columns:
                            optics.loc[selected, column] = optics.loc[selected, column].astype(float) * factor
        blocks_out["optics"] = optics
    blocks_out["movies"] = movies
    _write_star(destination, blocks_out)
    outcome.path = destination
    outcome.n_movies = len(records)
    outcome.has_optics = optics is not None
    return outcome


def _write_star(path: Path, blocks: dict[str, Any]) -> None:
    """Write a STAR file atomically (``X.tmp`` then rename), as the movies are written."""
    import warnings

    import starfile

    tmp = path.with_name(path.name + ".tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # starfile's own deprecation and resource warnings
            starfile.write(blocks, tmp, overwrite=True)
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


# --------------------------------------------------------------------------- External jobs


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

    def start(self) -> None:
        """Remove the exit files of an earlier run (RELION decides on the first it finds)."""
        for name in (EXIT_SUCCESS_NAME, EXIT_FAILURE_NAME, EXIT_ABORTED_NAME):
            _remove_quietly(self.directory / name)

    def abort_requested(self, force: bool = False) -> bool:
        """True if RELION asked the job to stop (checked at most every ``abort_check_seconds``)."""
        now = time.monotonic()
        if not force and now - self._last_check < self.abort_check_seconds:
            return False
        self._last_check = now
        return (self.directory / ABORT_NOW_NAME).exists()

    def finish(self, exit_status: int, aborted: bool = False) -> Path | None:
        """Write the exit file for ``exit_status`` (0: success); returns it, or None if the
        directory cannot be written (the CLI reports the exit status anyway)."""
        if aborted:
            name = EXIT_ABORTED_NAME
            _remove_quietly(self.directory / ABORT_NOW_NAME)  # or a rerun would stop at once
        else:
            name = EXIT_SUCCESS_NAME if exit_status == 0 else EXIT_FAILURE_NAME
        path = self.directory / name
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path.touch()
        except OSError:
            return None
        return path

    def write_output_nodes(self, movies_star: Path) -> Path:
        """Write ``RELION_OUTPUT_NODES.star`` naming ``movies_star`` (as RELION will look it up:
        relative to the project directory, i.e. the current directory).

        Raises:
            OutputError: the file cannot be written.
        """
        import pandas as pd

        nodes = pd.DataFrame(
            {
                "rlnPipeLineNodeName": [str(movies_star)],
                "rlnPipeLineNodeTypeLabel": [MOVIES_NODE_TYPE_LABEL],
                "rlnPipeLineNodeType": [MOVIES_NODE_TYPE_NUMBER],
            }
        )
        path = self.directory / OUTPUT_NODES_NAME
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{self.directory}: cannot create the directory ({exc.strerror})") from None
        _write_star(path, {"output_nodes": nodes})
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


# --------------------------------------------------------------------------- --report


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def result_record(result: MovieResult) -> dict[str, Any]:
    """One movie's entry of the report (every field of :class:`MovieResult`)."""
    return _jsonable(dataclasses.asdict(result))


def write_report(
    path: Path,
    results: Sequence[MovieResult],
    options: ConvertOptions,
    inputs: Sequence[str],
    summary: Summary | None,
    exit_status: int,
    state: str = "finished",
    error: str | None = None,
    movies_star: Path | None = None,
) -> None:
    """Write the ``--report`` JSON file (atomically).

    Contents: ``cryotiff_version``; ``state`` (``finished``, ``interrupted``, ``aborted`` or
    ``error``); ``exit_status``; ``error`` (the message that stopped the run, if any);
    ``created`` (local time, ISO 8601); ``inputs`` (the ``--i`` arguments); ``options`` (every
    conversion option); ``movies_star``; ``totals`` (movies converted / skipped / failed, frames
    verified, input and output bytes, ratio in percent, wall time in seconds, MB/s); ``movies``
    (one entry per movie handled: source, destination, status, message, n_pages,
    frames_verified, input_bytes, output_bytes, seconds, codec, dtype, warnings, details).

    Raises:
        OutputError: the file cannot be written.
    """
    if summary is None:
        from .jobs import summarise

        summary = summarise(results, 0.0)
    totals = {
        "converted": summary.converted,
        "skipped": summary.skipped,
        "failed": summary.failed,
        "frames_verified": summary.frames_verified,
        "input_bytes": summary.input_bytes,
        "output_bytes": summary.output_bytes,
        "ratio_percent": round(summary.ratio_percent, 3),
        "wall_seconds": round(summary.wall_seconds, 3),
        "megabytes_per_second": round(summary.megabytes_per_second, 3),
        "damaged_eer_frames": summary.damaged_eer_frames,
    }
    document = {
        "cryotiff_version": __version__,
        "state": state,
        "exit_status": exit_status,
        "error": error,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": list(inputs),
        "options": _jsonable(dataclasses.asdict(options)),
        "movies_star": str(movies_star) if movies_star else None,
        "totals": totals,
        "movies": [result_record(result) for result in results],
    }
    _write_json(Path(path), document)


# --------------------------------------------------------------------------- --dry_run


@dataclass
class DryRunEntry:
    """One movie in a dry run.

    Attributes:
        source, destination: as in a real run.
        action: ``convert``, ``skip`` (complete ``.tif`` found with ``--only_do_unfinished``) or
            ``fail`` (the movie cannot be converted; ``message`` says why).
        n_pages, dtype, codec, shape_yx: what would be written.
        input_bytes: frame data read from the input.
        uncompressed_bytes: pages x rows x columns x bytes per sample of the output.
        estimated_output_bytes: the expected TIFF size.
        sampled: True if the estimate comes from encoding this movie's first page.
    """

    source: Path
    destination: Path | None
    action: str
    message: str = ""
    n_pages: int = 0
    dtype: str = ""
    codec: str = ""
    shape_yx: tuple[int, int] = (0, 0)
    input_bytes: int = 0
    uncompressed_bytes: int = 0
    estimated_output_bytes: int = 0
    sampled: bool = False


@dataclass
class DryRunPlan:
    """The result of :func:`plan_dry_run`."""

    entries: list[DryRunEntry]
    n_sampled: int = 0

    def count(self, action: str) -> int:
        return sum(1 for entry in self.entries if entry.action == action)

    @property
    def input_bytes(self) -> int:
        return sum(e.input_bytes for e in self.entries if e.action == "convert")

    @property
    def estimated_output_bytes(self) -> int:
        return sum(e.estimated_output_bytes for e in self.entries if e.action == "convert")


def _encode_first_page(source, options: ConvertOptions) -> tuple[str, int]:
    """The codec a real run would choose for ``source`` (``auto`` measures candidates on page 0)
    and the bytes of its first page once encoded with it."""
    page = source.page(0)
    rows_per_strip = 1 if options.line_by_line else None
    codec = resolve_codec(options.compression, options.deflate_level, source.shape_yx[1], source.is_eer,
                          sample=page, rows_per_strip=rows_per_strip)
    step = rows_per_strip or source.shape_yx[0]
    rows = np.ascontiguousarray(flip_rows(page))
    row_bytes = rows.view(np.uint8).reshape(rows.shape[0], -1)
    return codec.label, sum(len(codec.encode(row_bytes[first : first + step])) for first in range(0, rows.shape[0], step))


def _sample_indices(count: int, wanted: int) -> list[int]:
    """``wanted`` indices spread evenly over ``range(count)`` (first and last included)."""
    if count <= wanted:
        return list(range(count))
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)}) if wanted > 1 else [0]


def plan_dry_run(
    inputs: Sequence[str],
    options: ConvertOptions,
    relative_to: Path | None = None,
    sampled_movies: int = DRY_RUN_SAMPLED_MOVIES,
) -> DryRunPlan:
    """What a run would do, without writing anything, and the expected output size.

    Every movie is opened (header only; float movies also read their first frame to choose the
    sample type, as the real run does; a ``--gain`` is loaded but not written). The size is
    estimated by encoding the first page of up to ``sampled_movies`` movies spread over the list
    (and of the first movie of every kind: shape and sample type) with the codec a real run
    would choose for it, taking compressed bytes per page times the page count, plus the TIFF
    structure. The other movies get the codec and compression ratio of the sampled movies of
    their kind. A movie whose later frames differ from the first (a float movie that turns out
    not to be integer-valued, for example) can end up larger or smaller.

    Raises:
        CryotiffError: an input names nothing (as in a real run).
    """
    if options.estimate_gain:
        raise OptionError("--dry_run lists TIFFs to write; --estimate_gain writes none")
    jobs, failures = plan(inputs, options, relative_to)
    context = prepare(jobs, options, Reporter(), write_files=False)  # the --gain, loaded but not written
    entries = [DryRunEntry(f.source, f.destination, "fail", f.message) for f in failures]
    to_convert: list[tuple[DryRunEntry, Job]] = []
    for job in jobs:
        if options.only_do_unfinished and is_finished(job, options, context):
            entries.append(DryRunEntry(job.source, job.destination, "skip", "already converted"))
            continue
        try:
            source = open_page_source(job.source, options, context)
        except CryotiffError as exc:
            entries.append(DryRunEntry(job.source, job.destination, "fail", str(exc)))
            continue
        except OSError as exc:
            entries.append(DryRunEntry(job.source, job.destination, "fail", f"{job.source}: {exc.strerror or exc}"))
            continue
        try:
            itemsize = np.dtype(source.dtype).itemsize
            entry = DryRunEntry(
                job.source,
                job.destination,
                "convert",
                n_pages=source.n_pages,
                dtype=str(source.dtype),
                shape_yx=tuple(source.shape_yx),
                input_bytes=source.input_bytes,
                uncompressed_bytes=source.n_pages * source.shape_yx[0] * source.shape_yx[1] * itemsize,
            )
        finally:
            source.close()
        entries.append(entry)
        to_convert.append((entry, job))

    # Which movies to encode a page of: an even spread, plus the first of every kind.
    def kind(entry: DryRunEntry) -> tuple:
        return (entry.shape_yx, entry.dtype)

    chosen = set(_sample_indices(len(to_convert), sampled_movies))
    seen_kinds: set[tuple] = set()
    for index, (entry, _) in enumerate(to_convert):
        if kind(entry) not in seen_kinds:
            seen_kinds.add(kind(entry))
            chosen.add(index)
    page_ratio: dict[tuple, list[float]] = {}
    codec_of_kind: dict[tuple, str] = {}
    for index in sorted(chosen):
        entry, job = to_convert[index]
        if entry.n_pages == 0:
            continue
        try:
            source = open_page_source(job.source, options, context)
            try:
                entry.codec, encoded = _encode_first_page(source, options)
            finally:
                source.close()
        except CryotiffError as exc:
            entry.action, entry.message = "fail", str(exc)
            continue
        except OSError as exc:
            entry.action, entry.message = "fail", f"{job.source}: {exc.strerror or exc}"
            continue
        page_nbytes = entry.uncompressed_bytes // entry.n_pages
        page_ratio.setdefault(kind(entry), []).append(encoded / page_nbytes if page_nbytes else 1.0)
        codec_of_kind.setdefault(kind(entry), entry.codec)
        entry.sampled = True
    all_ratios = [ratio for ratios in page_ratio.values() for ratio in ratios]
    overall = float(np.mean(all_ratios)) if all_ratios else 1.0
    for entry, _ in to_convert:
        if entry.action != "convert":
            continue
        ratios = page_ratio.get(kind(entry))
        ratio = float(np.mean(ratios)) if ratios else overall
        entry.codec = entry.codec or codec_of_kind.get(kind(entry), options.compression)
        strips_per_page = entry.shape_yx[0] if options.line_by_line else 1
        overhead = entry.n_pages * (TIFF_PAGE_OVERHEAD_BYTES + TIFF_STRIP_OVERHEAD_BYTES * strips_per_page)
        entry.estimated_output_bytes = int(round(entry.uncompressed_bytes * ratio)) + 8 + overhead
    return DryRunPlan(entries=entries, n_sampled=sum(1 for e in entries if e.sampled))


def format_bytes(n_bytes: float) -> str:
    """``1234567`` -> ``1.23 MB`` (decimal units, as the summary table)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n_bytes) < 1000 or unit == "TB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.2f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.2f} TB"


def format_dry_run(dry_run: DryRunPlan) -> list[str]:
    """The lines ``--dry_run`` prints: one per movie, then the totals and how they were estimated."""
    lines = []
    for entry in dry_run.entries:
        if entry.action == "convert":
            lines.append(
                f"Would convert {entry.source} into {entry.destination}  ({entry.n_pages} pages "
                f"{entry.shape_yx[1]} x {entry.shape_yx[0]} {entry.dtype}, {entry.codec}; about "
                f"{format_bytes(entry.estimated_output_bytes)})"
            )
        elif entry.action == "skip":
            lines.append(f"Would skip {entry.source}: {entry.destination} is complete")
        else:
            lines.append(f"Cannot convert: {entry.message}")
    n_convert = dry_run.count("convert")
    lines.append("")
    lines.append(
        f"Dry run: {n_convert} movies would be converted, {dry_run.count('skip')} skipped, "
        f"{dry_run.count('fail')} cannot be converted. Nothing was written."
    )
    if n_convert:
        ratio = 100.0 * dry_run.estimated_output_bytes / dry_run.input_bytes if dry_run.input_bytes else 0.0
        lines.append(
            f"Input: {format_bytes(dry_run.input_bytes)}   Expected output: about "
            f"{format_bytes(dry_run.estimated_output_bytes)}   ({ratio:.1f} % of the input)"
        )
        lines.append(
            f"Estimated by encoding the first frame of {dry_run.n_sampled} of {n_convert} movies "
            "with the codec each would use and scaling by the page count; the other movies take "
            "the ratio of the sampled movies of the same shape and type."
        )
    return lines


def write_dry_run_report(
    path: Path, dry_run: DryRunPlan, options: ConvertOptions, inputs: Sequence[str], exit_status: int
) -> None:
    """``--report`` with ``--dry_run``: the plan instead of results (``state`` is ``dry_run``;
    ``movies`` holds one :class:`DryRunEntry` per movie).

    Raises:
        OutputError: the file cannot be written.
    """
    document = {
        "cryotiff_version": __version__,
        "state": "dry_run",
        "exit_status": exit_status,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": list(inputs),
        "options": _jsonable(dataclasses.asdict(options)),
        "totals": {
            "would_convert": dry_run.count("convert"),
            "would_skip": dry_run.count("skip"),
            "cannot_convert": dry_run.count("fail"),
            "input_bytes": dry_run.input_bytes,
            "estimated_output_bytes": dry_run.estimated_output_bytes,
            "sampled_movies": dry_run.n_sampled,
        },
        "movies": [_jsonable(dataclasses.asdict(entry)) for entry in dry_run.entries],
    }
    _write_json(Path(path), document)


def _write_json(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(document, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise OutputError(f"{path}: cannot write the report ({exc.strerror or exc})") from None
