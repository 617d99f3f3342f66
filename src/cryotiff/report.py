"""``--report FILE.json`` (:func:`write_report`) and ``--dry_run`` (:func:`plan_dry_run`,
:func:`format_dry_run`, :func:`write_dry_run_report`).

Like the rest of the library this module never prints: it returns what happened and the CLI
prints it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__
from .codecs import resolve_codec
from .convert import ConvertOptions, MovieResult, open_page_source
from .errors import CryotiffError, OptionError, OutputError
from .io.atomic import CheckedDirectory, open_directory, remove_stale_temporaries, write_bytes_atomically
from .io.tiff import flip_rows
from .jobs import FinishedCheck, Job, Reporter, Summary, check_finished, converting_again, plan, prepare
from .manifest import Manifest

#: Said of an existing output that a run without ``--only_do_unfinished`` converts again.
_REPLACED = "{} exists and would be replaced (without --only_do_unfinished every movie is converted)"

#: Movies whose first page is encoded to estimate the output size in a dry run.
DRY_RUN_SAMPLED_MOVIES = 8

#: TIFF bytes per page besides strip data (IFD of ~15 tags, their values, alignment).
TIFF_PAGE_OVERHEAD_BYTES = 256
#: TIFF bytes per strip besides its data (StripOffsets and StripByteCounts entries).
TIFF_STRIP_OVERHEAD_BYTES = 8


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
    directory: CheckedDirectory | None = None,
) -> None:
    """Write the ``--report`` JSON file (atomically; into ``directory``, its directory as the
    run checked it (:func:`checked_report_directory`), if given). In state ``watching`` (a ``--watch`` going
    on) it also holds ``watch_process``, the process writing it (:func:`watch_process`), so that
    a report left by a killed watch can be told from a live one (:func:`current_state`).

    Contents: ``cryotiff_version``; ``state`` (``finished``, ``interrupted``, ``aborted``,
    ``error``, ``watching``; :data:`WATCH_GONE` is given later, by :func:`mark_a_gone_watch`); ``exit_status``; ``error`` (the message that stopped the run, if any);
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
        "not_in_manifest": summary.not_in_manifest,
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
    if state == WATCHING:
        document["watch_process"] = watch_process()
    _write_json(Path(path), document, directory)


#: The ``state`` of a ``--watch``'s report while it goes on.
WATCHING = "watching"
#: The ``state`` given to a report left in :data:`WATCHING` by a watch whose process is gone
#: (killed with SIGKILL, out of memory, its node lost: it could not write its end).
WATCH_GONE = "stopped (process gone)"


def _process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, ``/proc/<pid>/stat`` field 22), to
    tell it from a later process given the same pid; None where there is no ``/proc``.

    Raises:
        ProcessLookupError: there is no process ``pid`` (Linux).
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            raise ProcessLookupError(pid) from None
        return None
    except OSError:
        return None
    try:
        return int(text.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def watch_process() -> dict[str, Any]:
    """``watch_process`` of a watching report: ``pid``, ``host`` (``socket.gethostname()``) and
    ``start_ticks`` (when the process started, Linux; null elsewhere)."""
    import socket

    try:
        ticks = _process_start_ticks(os.getpid())
    except ProcessLookupError:
        ticks = None
    return {"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": ticks}


def _watch_gone(document: dict[str, Any]) -> bool:
    """A watching report whose process is known to be gone: on this host, no process has its
    pid, or the one that has it started at another time. (On another host it cannot be told.)"""
    import socket

    process = document.get("watch_process")
    if not isinstance(process, dict) or process.get("host") != socket.gethostname():
        return False
    pid, ticks = process.get("pid"), process.get("start_ticks")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        now = _process_start_ticks(pid)
        if now is None:
            os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: a process of another user has the pid
        return False
    return ticks is not None and now is not None and now != ticks


def _read_report(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK)) as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return None
            document = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def current_state(path: Path) -> str | None:
    """The ``state`` of the report at ``path`` as it stands now: its own, but
    :data:`WATCH_GONE` for a report in state ``watching`` whose process is gone (see
    :func:`_watch_gone`); None when there is no report there."""
    document = _read_report(Path(path))
    if document is None:
        return None
    state = document.get("state")
    return WATCH_GONE if state == WATCHING and _watch_gone(document) else state


def mark_a_gone_watch(path: Path) -> str | None:
    """Before a run writes its ``--report`` at ``path``: a report there left in state
    ``watching`` by a watch whose process is gone gets the state :data:`WATCH_GONE` at once
    (this run replaces it only later: at its end, or after its first movie). Returns the line
    that says so, or None (no such report, or it cannot be rewritten: the run replaces it
    anyway)."""
    path = Path(path)
    document = _read_report(path)
    if document is None or document.get("state") != WATCHING or not _watch_gone(document):
        return None
    process = document["watch_process"]
    document["state"] = WATCH_GONE
    try:
        _write_json(path, document)
    except CryotiffError:
        pass
    return (f"{path}: the --watch that wrote it (process {process['pid']} on {process['host']}) is gone; its state "
            f"is now '{WATCH_GONE}'")


# --------------------------------------------------------------------------- --dry_run


@dataclass
class DryRunEntry:
    """One movie in a dry run.

    Attributes:
        source, destination: as in a real run.
        action: ``convert``, ``skip`` (complete ``.tif`` found with ``--only_do_unfinished``) or
            ``fail`` (the movie cannot be converted; ``message`` says why).
        reason: for ``convert`` where the ``.tif`` exists: why it would be converted again, in
            the words of ``--only_do_unfinished`` (``out/a.tif: incomplete (...); converting
            again``), or that it would be replaced; "" otherwise.
        notes: for ``skip``: what the check noted (an output without a record).
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
    reason: str = ""
    notes: tuple[str, ...] = ()
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
                          sample=page, rows_per_strip=rows_per_strip, huffman_encoder=source.huffman_encoder,
                          lzw_encoder=source.lzw_encoder)
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
    # the --gain loaded, not written; a gain-reference.mrc the run would refuse to replace is refused
    context = prepare(jobs, options, Reporter(), write_files=False, check_existing=True)
    # Read (never written here) by the --only_do_unfinished checks of EER outputs, once for all movies.
    context.manifest = Manifest(options.output_dir)
    entries = [DryRunEntry(f.source, f.destination, "fail", f.message) for f in failures]
    to_convert: list[tuple[DryRunEntry, Job]] = []
    for job in jobs:
        check = check_finished(job, options, context) if options.only_do_unfinished else FinishedCheck(False)
        if check.finished:
            entries.append(DryRunEntry(job.source, job.destination, "skip", "already converted", notes=check.notes))
            continue
        reason = converting_again(check) or (_REPLACED.format(job.destination)
                                             if not options.only_do_unfinished and job.destination.exists() else "")
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
                reason=reason,
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
            if entry.reason:
                lines.append(f"  {entry.reason}")
        elif entry.action == "skip":
            lines.append(f"Would skip {entry.source}: {entry.destination} is complete")
            lines.extend(f"  {note}" for note in entry.notes)
        else:
            lines.append(f"Cannot convert: {entry.message}")
    n_convert = dry_run.count("convert")
    lines.append("")
    lines.append(
        f"Dry run: {n_convert} movie{'s' * (n_convert != 1)} would be converted, {dry_run.count('skip')} skipped, "
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
    path: Path, dry_run: DryRunPlan, options: ConvertOptions, inputs: Sequence[str], exit_status: int,
    directory: CheckedDirectory | None = None,
) -> None:
    """``--report`` with ``--dry_run``: the plan instead of results (``state`` is ``dry_run``;
    ``movies`` holds one :class:`DryRunEntry` per movie). ``directory``: as for
    :func:`write_report`.

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
    _write_json(Path(path), document, directory)


def write_check_gain_report(
    path: Path, check_gain: dict[str, Any] | None, options: ConvertOptions, inputs: Sequence[str],
    exit_status: int, error: str | None = None, directory: CheckedDirectory | None = None,
) -> None:
    """``--report`` with ``--check_gain``: ``state`` is ``check_gain`` (``error`` when the check
    stopped before an answer, with the message in ``error``); ``check_gain`` holds
    :meth:`cryotiff.gain_check.check.GainCheckResult.report_section` (None after an error).
    ``directory``: as for :func:`write_report`.

    Raises:
        OutputError: the file cannot be written.
    """
    document = {
        "cryotiff_version": __version__,
        "state": "check_gain" if check_gain is not None else "error",
        "exit_status": exit_status,
        "error": error,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": list(inputs),
        "options": _jsonable(dataclasses.asdict(options)),
        "check_gain": check_gain,
    }
    _write_json(Path(path), document, directory)


#: The first bytes of every report this module writes (``{`` and its first key).
REPORT_START = b'{\n  "cryotiff_version": '


def check_report_path(path: Path, dir_fd: int | None = None) -> None:
    """Refuse a ``--report`` path at which a file other than a report of cryotiff exists: a
    movie, a list, a gain or a TIFF given there by mistake would be replaced by the JSON (an
    original that users delete nothing but after converting). A report of an earlier run is
    replaced, as the option promises; a symbolic link is judged by the file it leads to.
    ``dir_fd``: a descriptor of ``path``'s directory, in which its name is looked up.

    Raises:
        OptionError: naming the path.
    """
    name = path if dir_fd is None else Path(path).name
    try:
        with open(name, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK, dir_fd=dir_fd)) \
                as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise IsADirectoryError  # a named pipe or device: no report either
            start = handle.read(len(REPORT_START))
    except FileNotFoundError:
        return
    except OSError:
        start = b""  # a directory, or a file that cannot be read: no report known to be there
    if start != REPORT_START:
        raise OptionError(f"--report {path}: the file exists and is not a report of cryotiff; it is not replaced. "
                          "Give another name.")


def checked_report_directory(path: Path) -> CheckedDirectory | None:
    """The ``--report``'s directory as the run checks it when it starts (made if missing), for
    every writing of the report (``directory`` of :func:`write_report`): a directory that
    replaces it during the run (a symbolic link, say) then gets no report. None where it cannot
    be made or looked at now (the writing says why)."""
    parent = Path(path).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return CheckedDirectory(parent, parent)
    except (OSError, OutputError):
        return None


def _write_json(path: Path, document: dict[str, Any], directory: CheckedDirectory | None = None) -> None:
    """Write the report atomically, in ``directory`` (the one the run checked) if given, else in
    ``path``'s directory as it leads now (made if missing); one descriptor of it serves the
    check of what stands at the name, the removal of stale temporary files and the writing."""
    try:
        if directory is None and path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        dir_fd = directory.open() if directory is not None else open_directory(path.parent)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the report ({exc.strerror or exc})") from None
    except OutputError as exc:
        raise OutputError(f"{path}: not written: {exc}") from None
    try:
        try:
            check_report_path(path, dir_fd)  # again: a file may have come to that name during the run
        except OptionError as exc:
            raise OutputError(str(exc)) from None
        remove_stale_temporaries(path, dir_fd)  # left by a run killed while it wrote the report
        write_bytes_atomically(path, (json.dumps(document, indent=2) + "\n").encode(), fsync=True, directory=dir_fd)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the report ({exc.strerror or exc})") from None
    finally:
        os.close(dir_fd)
