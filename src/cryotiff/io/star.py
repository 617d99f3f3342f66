"""STAR files: read through starfile, written as starfile writes them.

Input: the ``movies`` table of a RELION 3.1+ movie STAR file, else the first table (RELION 3.0
files have one unnamed ``data_`` block), column ``rlnMicrographMovieName``. CR+LF line ends are
accepted (RELION rejects them). starfile is imported only when a STAR file is read: it brings in
pandas and pyarrow (about 70 MiB of memory and 0.5 s of start-up).

Output (``movies.star``, ``RELION_OUTPUT_NODES.star``): tables given as rows of plain values,
written in starfile's layout and number format (:func:`format_loop_block`; the tests compare it
with starfile's ``StarWriter``), so that writing a list of converted movies needs no pandas.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from ..errors import EmptyStarError, OutputError, StarFormatError
from . import name_of_descriptor, open_regular_file
from .atomic import remove_if_stale, temporaries_of, write_bytes_atomically

MOVIE_NAME_COLUMN = "rlnMicrographMovieName"


def read_star_blocks(path: Path) -> dict[str, Any]:
    """Return ``{block name: table}`` of a STAR file (tables are pandas DataFrames or dicts).

    Raises:
        StarFormatError: the file is missing or cannot be parsed; :class:`EmptyStarError` (one
            of them) when it is empty.
    """
    # starfile reads by name, several times: it is given the name of the file opened here
    # (/proc/self/fd/N), so that it reads the regular file that was checked even if a named
    # pipe takes the STAR file's name meanwhile (which would block it for ever).
    descriptor = open_regular_file(path, "a STAR file", StarFormatError)
    try:
        if os.fstat(descriptor).st_size == 0:
            raise EmptyStarError(f"{path}: the STAR file is empty")
        opened = name_of_descriptor(descriptor) or os.fspath(path)
        blocks = _parse_star(opened, path)
    except OSError as exc:
        raise StarFormatError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(descriptor)
    if not blocks:
        raise StarFormatError(f"{path}: the STAR file holds no data block")
    return blocks


def _parse_star(opened: str, path: Path) -> dict[str, Any]:
    """starfile's blocks of the file it opens as ``opened``; its errors name ``path``."""
    import linecache

    import starfile

    def problem(exc: BaseException) -> str:
        return str(exc).replace(opened, os.fspath(path))

    # starfile reads lines through linecache and clears it only after a successful parse: after a
    # failed one, a later read of the same file name would get the old lines.
    linecache.clearcache()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return starfile.read(opened, always_dict=True)
    except TypeError as exc:
        if "NoneType" not in str(exc):
            raise StarFormatError(f"{path}: not a readable STAR file ({problem(exc)})") from None
        # starfile's parse of a data_ line that no loop_ or _name line follows
        raise StarFormatError(f"{path}: not a readable STAR file (a data_ block holds no table)") from None
    except Exception as exc:
        raise StarFormatError(f"{path}: not a readable STAR file ({problem(exc)})") from None
    finally:
        linecache.clearcache()


def _n_rows(table: Any) -> int:
    return len(table) if hasattr(table, "columns") else (1 if table else 0)


def movie_table_name(blocks: dict[str, Any]) -> str:
    """RELION's choice: the ``movies`` table if it has rows, else the first table."""
    if "movies" in blocks and _n_rows(blocks["movies"]) > 0:
        return "movies"
    return next(iter(blocks))


def read_movie_names(path: Path) -> list[str]:
    """Movie names of a movie STAR file, as written in the file (relative to the current directory,
    as in RELION).

    Raises:
        StarFormatError: no ``rlnMicrographMovieName`` column (RELION's message); a movies table
            without rows (RELION then looks in the first table and gives the column message):
            :class:`EmptyStarError`, as for an empty file.
    """
    blocks = read_star_blocks(path)
    if "movies" in blocks and _n_rows(blocks["movies"]) == 0:
        raise EmptyStarError(f"{path}: the movies table lists no movie")
    table = blocks[movie_table_name(blocks)]
    if hasattr(table, "columns"):
        if MOVIE_NAME_COLUMN not in table.columns:
            raise StarFormatError(
                f"{path}: the input STAR file does not contain the {MOVIE_NAME_COLUMN} column"
            )
        names = [str(name).strip() for name in table[MOVIE_NAME_COLUMN]]
    else:  # a single-row block is read as a dict
        if MOVIE_NAME_COLUMN not in table:
            raise StarFormatError(
                f"{path}: the input STAR file does not contain the {MOVIE_NAME_COLUMN} column"
            )
        names = [str(table[MOVIE_NAME_COLUMN]).strip()]
    names = [name for name in names if name]
    if not names:
        raise EmptyStarError(f"{path}: the movies table lists no movie")
    return names


#: How starfile (through pandas' ``to_csv``) writes a missing value and a float column.
MISSING_VALUE = "<NA>"
FLOAT_FORMAT = "%.6f"


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)
                             and math.isnan(value))


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy.bool_, without numpy


def _quoted(text: str) -> str:
    return f'"{text}"' if " " in text or not text else text


def _column_format(values: Sequence[Any]) -> Callable[[Any], str]:
    """How one column's values are written: as pandas types the column and starfile prints it.
    Whole numbers alone: as integers; numbers with a fraction or a missing value among them:
    ``%.6f`` (pandas makes the column float); true/false alone: ``True``/``False``; anything else
    (text, mixed kinds): each value as text, quoted when it holds a space or is empty."""
    present = [v for v in values if not _is_missing(v)]
    numeric = [v for v in present if isinstance(v, numbers.Real) and not _is_bool(v)]
    if present and all(_is_bool(v) for v in present):
        return lambda v: MISSING_VALUE if _is_missing(v) else str(bool(v))
    if len(numeric) == len(present):
        if len(present) == len(values) and all(isinstance(v, numbers.Integral) for v in present):
            return lambda v: str(int(v))
        return lambda v: MISSING_VALUE if _is_missing(v) else FLOAT_FORMAT % float(v)
    return lambda v: MISSING_VALUE if _is_missing(v) else (_quoted(v) if isinstance(v, str) else str(v))


def format_loop_block(name: str, rows: Sequence[Mapping[str, Any]]) -> Iterator[str]:
    """The lines of one ``data_<name>`` loop table, as starfile's ``StarWriter`` writes the same
    table as a DataFrame (columns in order of first appearance, tab-separated, two blank lines
    after).

    Raises:
        ValueError: a value holds a tab or a line break, which a STAR line cannot hold.
    """
    columns = list(dict.fromkeys(column for row in rows for column in row))
    formats = [_column_format([row.get(column) for row in rows]) for column in columns]
    yield f"data_{name}"
    yield ""
    yield "loop_"
    for index, column in enumerate(columns, start=1):
        yield f"_{column} #{index}"
    for row in rows:
        cells = [write(row.get(column)) for column, write in zip(columns, formats)]
        bad = next((cell for cell in cells if "\t" in cell or "\n" in cell or "\r" in cell), None)
        if bad is not None:
            raise ValueError(f"the value {bad!r} holds a tab or a line break, which a STAR file cannot hold")
        yield "\t".join(cells)
    yield ""
    yield ""


def write_star_atomically(
    path: Path, blocks: Mapping[str, Sequence[Mapping[str, Any]]], header_lines: Sequence[str]
) -> None:
    """Write ``blocks`` (``{block name: rows}``, each row ``{column: value}``) as a STAR file of
    loop tables, atomically, as the movies are written
    (:func:`cryotiff.io.atomic.write_bytes_atomically`).

    ``header_lines`` (comment lines, each starting with ``#``) open the file. RELION takes any
    line holding ``data_`` for the start of a block and ``# version N`` for the file's version
    (``MetaDataTable::readStar`` in RELION's ``src/metadata_table.cpp``), so header lines must
    hold neither.

    Raises:
        OutputError: the file cannot be written, or a value cannot be written in a STAR file.
    """
    try:
        lines = [*header_lines, "", ""]
        for name, rows in blocks.items():
            lines.extend(format_loop_block(name, rows))
    except ValueError as exc:
        raise OutputError(f"{path}: {exc}") from None
    for stale in temporaries_of(Path(path)):  # left by a run killed while it wrote this file
        remove_if_stale(stale)
    write_bytes_atomically(path, "".join(line + "\n" for line in lines).encode(), fsync=True)
