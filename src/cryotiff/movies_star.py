"""``<o>/movies.star``: the converted movies listed for re-import into RELION.

:func:`write_movies_star` lists the movies that converted (or were already complete) with
``rlnMicrographMovieName`` pointing to their ``.tif`` files, and keeps what the input STAR files
said about them: every column of their rows, their optics groups and the name of their movie
table. The rules (also in docs/user-guide.md and docs/differences-from-relion.md):

* **Optics groups.** A movie from a STAR file keeps its optics group. Groups of several STAR
  files (or of an earlier list) that are equal in every column are one group; groups that differ
  are kept apart, numbered 1..N in the order of the optics table (RELION renumbers any other order,
  ``ObservationModel::loadSafely`` in RELION's ``src/jaz/single_particle/obs_model.cpp``), and a
  group whose name is already taken by a different group is renamed ``<name>_<number>``. EER
  movies rendered with ``--eer_upsampling`` other than 1 get their group's pixel size scaled to
  the rendered grid (a group of its own if the group also holds movies at the physical size).
* **Movies without a known optics group** (not from a STAR file, or from one without an optics
  table, while other listed movies have one) are never put into another file's group: an optics
  group needs the voltage and spherical aberration (RELION refuses a table without them), which
  a movie header does not state. They are listed in ``<o>/movies_unassigned.star`` instead, and a
  warning says so. Likewise a movie whose row lacks columns the table has.
* **Merging.** The file starts with a comment line naming cryotiff; a later run into the same
  ``--o`` reads such a file and merges its movies with the new ones (a movie converted again
  replaces its earlier entry; a movie that failed and whose ``.tif`` is gone is dropped). A file
  cryotiff did not write, an input STAR file or a link is never replaced: the list is written to
  ``<o>/movies_cryotiff.star`` instead, and a warning says so. Read, merge and write happen under
  a lock (``<o>/.movies.star.lock``, ``flock``), so that two runs into the same ``--o`` at the same
  time keep each other's movies.
* **Block names.** The movie table keeps the name of the input STAR file's movie table (a
  RELION 5 tilt-series STAR's ``data_220728_TS_01`` stays so); movies from tables of different
  names are listed in one table named ``movies``, with a warning.

Like the rest of the library this module never prints: it returns what happened and the CLI
prints it.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from . import __version__
from .convert import MOVIE_SUFFIXES, MovieResult
from .errors import CryotiffError, OutputError, StarFormatError
from .io import open_regular_file, open_regular_stream
from .io.atomic import LOCKS_UNSUPPORTED_ERRNOS, CheckedDirectory, open_directory
from .io.star import MOVIE_NAME_COLUMN, Table, movie_table_name, read_star_blocks, write_star_atomically

MOVIES_STAR_NAME = "movies.star"
#: Movies that cannot be listed in ``movies.star`` (their optics group is unknown).
UNASSIGNED_STAR_NAME = "movies_unassigned.star"
#: Added to the file name when a file cryotiff did not write stands in the way.
ALTERNATE_NAME_SUFFIX = "_cryotiff"
#: Held (``flock``) while a list is read, merged and written.
LOCK_NAME = ".movies.star.lock"
#: How long to wait for another run that holds the lock.
LOCK_TIMEOUT_SECONDS = 120.0

#: The first line of every list cryotiff writes: how a later run knows it may merge into it.
#: It must hold neither ``data_`` nor ``# version `` (RELION would read either as STAR syntax).
MARKER = "# Written by cryotiff"

OPTICS_BLOCK = "optics"
MOVIES_BLOCK = "movies"
GROUP_COLUMN = "rlnOpticsGroup"
GROUP_NAME_COLUMN = "rlnOpticsGroupName"

#: ``--eer_upsampling`` -> TIFF pixel size / physical pixel size.
EER_PIXEL_SIZE_FACTOR = {1: 1.0, 2: 0.5, 3: 0.25, -1: 2.0}

#: Optics columns that hold a pixel size of the movie as written (scaled for up-sampled EER).
OPTICS_PIXEL_SIZE_COLUMNS = ("rlnMicrographOriginalPixelSize",)


@dataclass
class MoviesStarOutcome:
    """What :func:`write_movies_star` did.

    Attributes:
        path: the STAR file written, or None when none was written.
        n_movies: movies listed in it (this run's and earlier runs').
        n_from_earlier: of those, movies listed by an earlier run and kept.
        has_optics: whether it carries an optics table.
        unassigned_path: ``movies_unassigned.star`` when some movies could not be listed in
            ``path``, else None.
        n_unassigned: movies listed in ``unassigned_path``.
        warnings: things the user should know (printed by the CLI).
    """

    path: Path | None
    n_movies: int = 0
    n_from_earlier: int = 0
    has_optics: bool = False
    unassigned_path: Path | None = None
    n_unassigned: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass(eq=False)
class _OpticsGroup:
    """One optics group as a source declared it.

    Attributes:
        row: the group's optics columns (``rlnOpticsGroup`` included, as the source numbered it).
        order: where it sorts in the merged table: (source index, group number, 1 if scaled).
        origin: the file that declared it (for messages).
    """

    row: dict[str, Any]
    order: tuple[int, float, int]
    origin: str


@dataclass(eq=False)
class _Entry:
    """One movie of the list.

    Attributes:
        record: its movie-table row; ``rlnMicrographMovieName`` is the ``.tif``.
        block: the name of the movie table it came from; None if not from a STAR file.
        optics: its optics group; None if unknown.
        reason: why ``optics`` is None (for the warning).
        from_earlier: listed by an earlier run.
    """

    record: dict[str, Any]
    block: str | None = None
    optics: _OpticsGroup | None = None
    reason: str = "it did not come from a STAR file"
    from_earlier: bool = False

    @property
    def name(self) -> str:
        return str(self.record[MOVIE_NAME_COLUMN])


def _star_inputs(inputs: Sequence[str]) -> list[Path]:
    """The ``--i`` arguments that inputs.expand_inputs reads as movie STAR files (same rule)."""
    return [Path(argument) for argument in inputs if Path(argument).suffix == ".star" and not Path(argument).is_dir()]


def _is_eer(movie: Path) -> bool:
    return MOVIE_SUFFIXES.get(movie.suffix.lower()) == "eer"


def _key(name: str) -> str:
    return os.path.normpath(name)


def _normalised(value: Any) -> str:
    """A value as the STAR file holds it (floats with 6 decimals, as written), for comparisons."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)) or hasattr(value, "dtype"):
        try:
            return f"{float(value):.6f}"
        except (TypeError, ValueError):
            pass
    return str(value).strip()


def _signature(row: dict[str, Any], without: Sequence[str] = (GROUP_COLUMN,)) -> tuple:
    return tuple(sorted((column, _normalised(value)) for column, value in row.items() if column not in without))


def _group_number(record: dict[str, Any]) -> float | None:
    try:
        return float(record[GROUP_COLUMN])
    except (KeyError, TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- reading


def _entries_of_table(
    blocks: dict[str, Table], origin: str, source_index: int, from_earlier: bool
) -> Iterator[_Entry]:
    """The movies of a STAR file's movie table, each with its optics group (if the file has one)."""
    table_name = movie_table_name(blocks)
    groups: dict[float, _OpticsGroup] | None = None
    if OPTICS_BLOCK in blocks and table_name != OPTICS_BLOCK:
        groups = {}
        for row in blocks[OPTICS_BLOCK].records():
            number = _group_number(row)
            if number is not None:
                groups.setdefault(number, _OpticsGroup(row, (source_index, number, 0), origin))
    for record in blocks[table_name].records():
        name = str(record.get(MOVIE_NAME_COLUMN, "")).strip()
        if not name:
            continue
        record[MOVIE_NAME_COLUMN] = name
        entry = _Entry(record, block=table_name, from_earlier=from_earlier)
        if groups is None:
            entry.reason = f"{origin} has no optics table"
        else:
            number = _group_number(record)
            entry.optics = groups.get(number) if number is not None else None
            if entry.optics is None:
                entry.reason = f"its optics group is not defined in {origin}"
        yield entry


def _earlier_entries(movies_star: Path | None, unassigned: Path | None, dir_fd: int) -> list[_Entry]:
    """The movies listed by an earlier run (both of cryotiff's files, read in the directory
    ``dir_fd``; source index 0)."""
    entries: list[_Entry] = []
    if movies_star is not None:
        blocks = read_star_blocks(movies_star, dir_fd)
        for entry in _entries_of_table(blocks, str(movies_star), 0, from_earlier=True):
            if entry.optics is None:
                entry.reason = "an earlier run listed it without an optics group"
            entries.append(entry)
    if unassigned is not None:
        for entry in _entries_of_table(read_star_blocks(unassigned, dir_fd), str(unassigned), 0, from_earlier=True):
            entries.append(_Entry({MOVIE_NAME_COLUMN: entry.name}, reason="an earlier run could not list it either",
                                  from_earlier=True))
    return entries


def _scaled(group: _OpticsGroup, factor: float) -> _OpticsGroup:
    """``group`` with its pixel size scaled to the rendered EER grid."""
    row = dict(group.row)
    changed = False
    for column in OPTICS_PIXEL_SIZE_COLUMNS:
        if column in row:
            with contextlib.suppress(TypeError, ValueError):
                row[column] = float(row[column]) * factor
                changed = True
    if not changed:
        return group
    return _OpticsGroup(row, (group.order[0], group.order[1], 1), group.origin)


def _new_entries(
    star_paths: Sequence[Path], listed: Sequence[MovieResult], eer_upsampling: int
) -> list[_Entry]:
    """This run's movies, with what their STAR files (sources 1, 2, ...) say about them, as the
    expansion of the inputs read them (:func:`cryotiff.inputs.star_blocks_read`; a file it did
    not read is read now). A STAR file that cannot be read is passed over: it was reported when
    the inputs were read (and no movie of it converted)."""
    from_star: dict[Path, _Entry] = {}
    unreadable: list[str] = []
    from .inputs import star_blocks_read

    for index, star_path in enumerate(star_paths, start=1):
        try:
            # As the inputs' expansion read it (read once): the rows of the movies converted
            blocks = star_blocks_read(star_path) or read_star_blocks(star_path)
        except StarFormatError:
            unreadable.append(str(star_path))
            continue
        for entry in _entries_of_table(blocks, str(star_path), index, from_earlier=False):
            from_star.setdefault(Path(entry.name), entry)  # the key inputs.expand_inputs uses
    factor = EER_PIXEL_SIZE_FACTOR.get(eer_upsampling, 1.0)
    scaled_groups: dict[int, _OpticsGroup] = {}
    entries = []
    for result in listed:
        found = from_star.get(result.source)
        if found is None:
            entry = _Entry({MOVIE_NAME_COLUMN: str(result.destination)})
            if unreadable:
                entry.reason = f"it is in no STAR file that could be read (not in {', '.join(unreadable)})"
        else:
            entry = _Entry(dict(found.record), found.block, found.optics, found.reason)
            entry.record[MOVIE_NAME_COLUMN] = str(result.destination)
            if entry.optics is not None and factor != 1.0 and _is_eer(result.source):
                group = entry.optics
                entry.optics = scaled_groups.setdefault(id(group), _scaled(group, factor))
        entries.append(entry)
    return entries


# --------------------------------------------------------------------------- merging


@dataclass
class _Tables:
    """The merged list, ready to write."""

    optics: list[dict[str, Any]]
    movies: list[dict[str, Any]]
    movie_block: str
    unassigned: list[_Entry]
    warnings: list[str]


def _number_groups(groups: list[_OpticsGroup], warnings: list[str]) -> tuple[dict[int, int], list[dict[str, Any]]]:
    """Merge the optics groups the listed movies use: groups equal in every column are one; the
    others are numbered 1..N in table order (earlier list first, then the STAR files in ``--i``
    order, each by its own numbers). A group whose name a group with other values already has is
    renamed ``<name>_<number>`` (and found again under that name by later runs).

    Returns:
        The number of each group (by ``id``) and the merged rows, group ``n`` at index ``n - 1``.
    """
    merged: list[dict[str, Any]] = []
    number_of: dict[int, int] = {}
    for group in sorted({id(g): g for g in groups}.values(), key=lambda g: g.order):
        signature = _signature(group.row)
        match = next((i for i, row in enumerate(merged) if _signature(row) == signature), None)
        name = group.row.get(GROUP_NAME_COLUMN)
        names = [str(row.get(GROUP_NAME_COLUMN)) for row in merged]
        if match is None and name is not None and str(name) in names:
            values = _signature(group.row, (GROUP_COLUMN, GROUP_NAME_COLUMN))
            renamed = re.compile(re.escape(str(name)) + r"_\d+")
            match = next(
                (i for i, row in enumerate(merged)
                 if renamed.fullmatch(str(row.get(GROUP_NAME_COLUMN)))
                 and _signature(row, (GROUP_COLUMN, GROUP_NAME_COLUMN)) == values),
                None,
            )
            if match is None:
                suffix = len(merged) + 1
                while f"{name}_{suffix}" in names:
                    suffix += 1
                row = {**group.row, GROUP_NAME_COLUMN: f"{name}_{suffix}"}
                merged.append(row)
                match = len(merged) - 1
                scaled = " (its pixel size scaled for --eer_upsampling)" if group.order[2] else ""
                warnings.append(
                    f"optics group {name} of {group.origin}{scaled} differs from another group of that "
                    f"name: listed as optics group {match + 1}, {row[GROUP_NAME_COLUMN]}"
                )
        if match is None:
            merged.append(dict(group.row))
            match = len(merged) - 1
        number_of[id(group)] = match + 1
    return number_of, merged


def _merge(entries: list[_Entry]) -> _Tables:
    """Decide which movies go into ``movies.star`` (and with which columns, optics groups and
    block name) and which into ``movies_unassigned.star``."""
    warnings: list[str] = []
    with_optics = [e.optics for e in entries if e.optics is not None]
    optics_columns = list(min(with_optics, key=lambda g: g.order).row) if with_optics else None

    def optics_fit(entry: _Entry) -> bool:
        if optics_columns is None:
            return True
        if entry.optics is None:
            return False
        if set(entry.optics.row) != set(optics_columns):
            entry.reason = f"the optics table of {entry.optics.origin} has other columns than the others"
            return False
        return True

    # The movie table's columns: those of the first movie from a STAR file that can be listed.
    first = next((e for e in entries if e.block is not None and optics_fit(e)), None)
    columns = list(first.record) if first is not None else [MOVIE_NAME_COLUMN]
    assigned: list[_Entry] = []
    unassigned: list[_Entry] = []
    dropped_columns: set[str] = set()
    for entry in entries:
        if not optics_fit(entry):
            unassigned.append(entry)
            continue
        missing = [c for c in columns if c not in entry.record]
        if missing:
            entry.reason = f"it has no {', '.join(missing)} column, which the other movies have"
            unassigned.append(entry)
            continue
        dropped_columns.update(c for c in entry.record if c not in columns)
        assigned.append(entry)
    if dropped_columns:
        warnings.append(f"the columns {', '.join(sorted(dropped_columns))} of some movies are left out: "
                        "the other movies do not have them")

    movies = [{c: entry.record[c] for c in columns} for entry in assigned]
    optics_rows: list[dict[str, Any]] = []
    if optics_columns is not None:
        number_of, merged = _number_groups([e.optics for e in assigned], warnings)
        for number, row in enumerate(merged, start=1):
            optics_rows.append({c: (number if c == GROUP_COLUMN else row[c]) for c in optics_columns})
        for record, entry in zip(movies, assigned):
            record[GROUP_COLUMN] = number_of[id(entry.optics)]

    blocks = list(dict.fromkeys(e.block for e in assigned if e.block is not None))
    movie_block = blocks[0] if len(blocks) == 1 and blocks[0] != OPTICS_BLOCK else MOVIES_BLOCK
    if len(blocks) > 1:
        warnings.append("movies from the tables " + ", ".join(f"data_{b}" for b in blocks)
                        + f" are listed in one table, data_{MOVIES_BLOCK}")
    return _Tables(optics_rows, movies, movie_block, unassigned, warnings)


# --------------------------------------------------------------------------- writing


def is_written_by_cryotiff(path: Path, dir_fd: int | None = None) -> bool:
    """True if ``path`` is a regular file (not a link) whose comment lines before the first data
    block include cryotiff's :data:`MARKER`. With ``dir_fd`` (a descriptor of ``path``'s
    directory), its name is looked up there."""
    if dir_fd is None and (path.is_symlink() or not path.is_file()):
        return False
    try:
        # Opened so that a named pipe that took the name after the look above cannot block it;
        # with dir_fd, a link is refused by the open itself.
        with _open_list(path, dir_fd) as binary, \
                io.TextIOWrapper(binary, encoding="utf-8", errors="replace") as stream:
            for line in stream:
                if "data_" in line:
                    return False
                if line.startswith(MARKER):
                    return True
    except (OSError, CryotiffError):
        return False
    return False


def _open_list(path: Path, dir_fd: int | None):
    if dir_fd is None:
        return open_regular_stream(path, "movies.star")
    descriptor = open_regular_file(path, "movies.star", dir_fd=dir_fd)
    return open(descriptor, "rb")  # noqa: SIM115 (the caller's with closes it)


def _marker_lines() -> list[str]:
    return [f"{MARKER} {__version__}: the converted movies. A later cryotiff run into this directory "
            "merges its movies into this file."]


def _entry_status(dir_fd: int, name: str) -> os.stat_result | None:
    """What the name ``name`` is in the directory ``dir_fd`` (a link is not followed); None if
    nothing is there."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:  # as os.path.lexists: the writing then says what is wrong
        return None


def _is_input(status: os.stat_result, star_paths: Sequence[Path]) -> bool:
    for star in star_paths:
        try:
            other = os.stat(star)
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (status.st_dev, status.st_ino):
            return True
    return False


def _destination(dir_fd: int, output_dir: Path, name: str, star_paths: Sequence[Path]) -> tuple[Path | None, str]:
    """Where a list goes: ``name``, unless a file stands there that cryotiff may not replace
    (not written by cryotiff, a link, or an input STAR file); then ``<stem>_cryotiff.star``.
    Looked up in the directory ``dir_fd`` (``output_dir`` as the run checked it).

    Returns:
        The path (None if neither may be written) and, if ``name`` was passed over, why.
    """
    primary = output_dir / name
    alternate = output_dir / f"{primary.stem}{ALTERNATE_NAME_SUFFIX}{primary.suffix}"
    why = ""
    for candidate in (primary, alternate):
        status = _entry_status(dir_fd, candidate.name)
        if status is None:
            return candidate, why
        if stat.S_ISLNK(status.st_mode):
            reason = "it is a link"
        elif _is_input(status, star_paths):
            reason = "it is an input STAR file"
        elif not is_written_by_cryotiff(candidate, dir_fd):
            reason = "cryotiff did not write it"
        else:
            return candidate, why
        why = why or f"{candidate} was not replaced: {reason}"
    return None, why + f"; nor {alternate}: move one of them away"


@contextlib.contextmanager
def _locked(dir_fd: int, output_dir: Path, warnings: list[str]) -> Iterator[None]:
    """Hold ``<output_dir>/.movies.star.lock`` (``flock``; in the directory ``dir_fd``), waiting
    for another run that holds it. The lock file is removed on the way out; a run that locked a
    file so removed sees that it is no longer the one at the path and locks again.

    Raises:
        OutputError: the lock file cannot be made, or another run held it too long.
    """
    path = output_dir / LOCK_NAME
    deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
    while True:
        try:
            descriptor = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                                 dir_fd=dir_fd)
        except OSError as exc:
            raise OutputError(f"{path}: cannot open the lock file ({exc.strerror or exc})") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            if time.monotonic() > deadline:
                raise OutputError(f"{path}: another run has held this lock for {LOCK_TIMEOUT_SECONDS:.0f} s; "
                                  "the movie list was not written") from None
            time.sleep(0.05)
            continue
        except OSError as exc:
            if exc.errno not in LOCKS_UNSUPPORTED_ERRNOS:
                os.close(descriptor)
                raise OutputError(f"{path}: cannot lock ({exc.strerror or exc})") from None
            warnings.append(f"{path}: this file system cannot lock files; two runs into the same "
                            "--o at the same time could lose each other's movies from the list")
        try:
            current = os.stat(LOCK_NAME, dir_fd=dir_fd, follow_symlinks=False)
            held = os.fstat(descriptor)
            if (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(descriptor)  # the file was removed by the run that held it: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(LOCK_NAME, dir_fd=dir_fd)
        os.close(descriptor)  # releases the lock


def _write_lists(
    dir_fd: int, output_dir: Path, star_paths: Sequence[Path], new_entries: list[_Entry],
    gone: list[MovieResult], outcome: MoviesStarOutcome,
) -> tuple[_Tables | None, dict[str, _Entry], Path | None]:
    """Under the lock, in the directory ``dir_fd``: read the earlier lists, merge, write.
    Returns the tables written (None if nothing was), the merged entries and movies.star's path."""
    with _locked(dir_fd, output_dir, outcome.warnings):
        destination, why = _destination(dir_fd, output_dir, MOVIES_STAR_NAME, star_paths)
        unassigned_path, why_unassigned = _destination(dir_fd, output_dir, UNASSIGNED_STAR_NAME, star_paths)
        for text in (why, why_unassigned):
            if text:
                outcome.warnings.append(text)
        if destination is None:
            return None, {}, None
        earlier_unassigned = (unassigned_path if unassigned_path is not None
                              and _entry_status(dir_fd, unassigned_path.name) is not None else None)
        earlier = destination if _entry_status(dir_fd, destination.name) is not None else None
        merged = {_key(e.name): e for e in _earlier_entries(earlier, earlier_unassigned, dir_fd)}
        for result in gone:
            merged.pop(_key(str(result.destination)), None)
        for entry in new_entries:
            merged[_key(entry.name)] = entry
        if not merged:
            return None, merged, None
        tables = _merge(list(merged.values()))
        outcome.warnings.extend(tables.warnings)
        blocks: dict[str, Any] = {}
        if tables.optics:
            blocks[OPTICS_BLOCK] = tables.optics
        blocks[tables.movie_block] = tables.movies
        _write_list(destination, blocks, dir_fd)
        if tables.unassigned and unassigned_path is None:
            outcome.warnings.append(f"{len(tables.unassigned)} movie(s) that cannot be listed in {destination} "
                                    "are listed nowhere")
        elif tables.unassigned:
            _write_list(unassigned_path, {MOVIES_BLOCK: [{MOVIE_NAME_COLUMN: e.name} for e in tables.unassigned]},
                        dir_fd)
            example = tables.unassigned[0]
            outcome.warnings.append(
                f"{len(tables.unassigned)} movie(s) are not in {destination} but in {unassigned_path}, "
                f"because their optics group is unknown or their row does not fit (for example "
                f"{example.name}: {example.reason}); give them optics groups with RELION's Import job"
            )
            outcome.unassigned_path, outcome.n_unassigned = unassigned_path, len(tables.unassigned)
        elif earlier_unassigned is not None:
            with contextlib.suppress(OSError):
                os.unlink(earlier_unassigned.name, dir_fd=dir_fd)  # every movie it listed is now in movies.star
    return tables, merged, destination


def _write_list(path: Path, blocks: dict[str, list[dict[str, Any]]], dir_fd: int) -> None:
    write_star_atomically(path, blocks, _marker_lines(), dir_fd=dir_fd)


def _open_output_dir(output_dir: Path, directory: CheckedDirectory | None) -> int:
    """A descriptor of ``--o``: the directory ``directory`` checked (one replaced since is
    refused), else ``output_dir`` as it leads now.

    Raises:
        OutputError: naming movies.star and why it was not written.
    """
    try:
        return directory.open() if directory is not None else open_directory(output_dir)
    except OutputError as exc:
        raise OutputError(f"{output_dir / MOVIES_STAR_NAME}: not written: {exc}") from None


def write_movies_star(
    inputs: Sequence[str],
    results: Iterable[MovieResult],
    output_dir: Path,
    eer_upsampling: int = 1,
    directory: CheckedDirectory | None = None,
) -> MoviesStarOutcome:
    """Write ``<output_dir>/movies.star`` listing the movies that converted or were already
    complete, merged with the list an earlier run wrote there; ``rlnMicrographMovieName`` points
    to the ``.tif`` files (named as the movies are: relative to the current directory unless
    ``--o`` is absolute). The rules are in this module's docstring.

    ``directory``: ``output_dir`` as the run checked it (:class:`cryotiff.io.atomic.CheckedDirectory`):
    a directory that replaced it since (a symbolic link, say) is refused, so that nothing goes
    where the TIFFs did not. Either way one descriptor of the directory, opened first, serves
    the lock, the earlier lists read and the files written.

    Nothing is written when this run lists no movie and drops none.

    Raises:
        OutputError: a list cannot be written.
        StarFormatError: the earlier list can no longer be read (an input STAR file that cannot
            be read is passed over: see _new_entries).
    """
    results = list(results)
    listed = [r for r in results if r.status in ("converted", "skipped") and r.destination is not None]
    gone = [r for r in results if r.status == "failed" and r.destination is not None
            and not os.path.lexists(r.destination)]
    outcome = MoviesStarOutcome(path=None)
    if not listed and not gone:
        return outcome
    star_paths = _star_inputs(inputs)
    new_entries = _new_entries(star_paths, listed, eer_upsampling)
    dir_fd = _open_output_dir(output_dir, directory)
    try:
        tables, merged, destination = _write_lists(dir_fd, output_dir, star_paths, new_entries, gone, outcome)
    finally:
        os.close(dir_fd)
    if tables is None:
        return outcome
    outcome.path = destination
    outcome.n_movies = len(tables.movies)
    unassigned_ids = {id(e) for e in tables.unassigned}
    outcome.n_from_earlier = sum(1 for e in merged.values() if e.from_earlier and id(e) not in unassigned_ids)
    outcome.has_optics = bool(tables.optics)
    return outcome
