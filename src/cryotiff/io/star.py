"""STAR files: read by a small reader of its own, written as starfile writes them.

Input: the ``movies`` table of a RELION 3.1+ movie STAR file, else the first table (RELION 3.0
files have one unnamed ``data_`` block), column ``rlnMicrographMovieName``; and the lists an
earlier run wrote (``movies.star``, ``movies_unassigned.star``). :func:`read_star_blocks` reads
them line by line, without pandas: a STAR input costs what a movie given directly costs (peak
RSS of a small conversion 44 MiB either way; 127 MiB through starfile, which imports pandas and
pyarrow, 706 modules against 282: docs/benchmarks.md, "Reading STAR files").

The values are those starfile 0.5 gave (the tests compare the two on generated files), so that
every output is as it was:

* loop columns are typed as pandas' ``read_csv`` and ``to_numeric`` typed them: whole numbers
  alone (``1``, ``+1``, ``-0``, ``007``) -> int; numbers with a fraction or an exponent
  (``1.``, ``.5``, ``1e3``, ``inf``, ``-Infinity``), or whole numbers with a missing value
  (``nan``, ``NaN``, ``<NA>``; ``NA``, ``NAN``, ``null`` are text) or an empty value (``""``)
  among them -> float, the missing and empty values NaN (``-0`` then 0.0 unless an empty value
  or a fraction is among them, as in pandas); ``True``/``TRUE``/``true`` and
  ``False``/... alone -> bool (with missing values among them: 1.0 and 0.0); anything else ->
  text (``str``), a missing value among text staying NaN; a column of empty or missing values
  alone keeps them ('' and NaN).
* key/value blocks: each value as Python's ``int()``, else ``float()``, else text, the line split
  as ``shlex.split`` splits it (quotes, no comments): exactly a name and a value. Lines not
  starting with ``_`` are skipped.
* lines end at LF, CR+LF (accepted; RELION refuses CR+LF) or CR, and are stripped of white space
  at both ends; a line starting with ``data_`` opens a block named by the rest of the line
  (RELION 3.0: ``data_`` alone, the name ''); comment lines (``#``) and blank lines anywhere
  are skipped, as is anything before the first block; a loop's labels are the first word of
  each ``_`` line after ``loop_`` (``#1`` and the rest ignored), its rows the lines after them up
  to the next ``data_`` line, split at spaces and tabs; a value in quotes (``'...'`` or
  ``"..."``) may hold spaces and ``#``; ``#`` after a space starts a comment.

Where starfile was plainly wrong, this reader differs (each case is in
tests/test_star_reading.py, ``test_where_starfile_was_wrong``):

* ``#`` inside a value is data (``Movies/a#1.mrc``; starfile cut the value at the ``#``, which
  RELION does not), and an apostrophe inside an unquoted value stays one (starfile made it
  ``"``); a quoted value ends at the quote that a space or the end of the line follows
  (starfile took ``"a""b"`` for ``a"b`` and ``"a"b`` for ``ab``);
* a row with fewer values than the loop has labels has empty values in its last columns (NaN in
  a column of numbers, '' in one of text), as starfile read it, also when it is the first row (starfile then failed; RELION
  accepts short rows in a loop of one or two labels only); a row with more is refused, as
  starfile and RELION refuse it;
* refused, naming the line: a label given twice in a loop (starfile made a table that gave the
  label's name for its values; in a key/value block the last value counts, as in starfile); a
  block name given twice (starfile kept the last block, RELION reads the first); a ``data_``
  line that another ``data_`` line follows before any table (starfile gave the first block the
  next one's table); a second ``loop_`` in one block, or a ``loop_`` after key/value pairs
  (starfile read the labels as keys and skipped the rows); a quoted value that is not closed;
* comment and blank lines between ``loop_`` and its labels, or among them, are skipped (starfile
  read the labels after them as rows); a loop whose rows are all comments has no rows (starfile
  failed); lines ending in CR alone are lines (starfile counted the lines
  ending in LF: a file of CR line ends had no rows, and a lone CR inside a line lost the last
  lines); whole numbers beyond 64 bits are ints
  (starfile failed on those beyond a float, and typed some mixes of them as text); a
  ``# coding: ...`` comment in the first two lines does not change how the file is decoded
  (starfile decoded it as a Python source file would be); a line starting with ``data`` but not
  ``data_`` in a key/value block is skipped (starfile ended the block there and dropped the
  pairs after it).

A file that is not UTF-8 text (a NUL byte, bytes that are not UTF-8), a line over
:data:`MAX_LINE_BYTES` or a file over :data:`MAX_STAR_BYTES` is refused with one message naming
the file and the line, after reading at most that line.

Output (``movies.star``, ``RELION_OUTPUT_NODES.star``): tables given as rows of plain values,
written in starfile's layout and number format (:func:`format_loop_block`; the tests compare it
with starfile's ``StarWriter``), so that writing a list of converted movies needs no pandas.
"""

from __future__ import annotations

import io
import math
import numbers
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping, Sequence

from ..errors import EmptyStarError, OutputError, StarFormatError
from . import open_regular_file
from .atomic import remove_if_stale, remove_stale_temporaries, temporaries_of, write_bytes_atomically

MOVIE_NAME_COLUMN = "rlnMicrographMovieName"

#: The longest line read (a movie STAR file's lines are a few hundred bytes).
MAX_LINE_BYTES = 1 << 20
#: The largest STAR file read (a million movies take about 150 MB).
MAX_STAR_BYTES = 1 << 30


@dataclass(frozen=True)
class Table:
    """One data block of a STAR file.

    Attributes:
        columns: the labels, in file order, without their ``_``.
        rows: the rows, each a tuple of values in the order of ``columns`` (int, float, bool or
            str: see the module docstring).
        is_loop: False for a key/value block, which has one row.
    """

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    is_loop: bool = True

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, column: object) -> bool:
        return column in self.columns

    def __getitem__(self, column: str) -> list[Any]:
        """The values of ``column``, row by row (KeyError if the table has no such column)."""
        if column not in self.columns:
            raise KeyError(column)
        index = self.columns.index(column)
        return [row[index] for row in self.rows]

    def records(self) -> list[dict[str, Any]]:
        """The rows as ``{column: value}``, new dicts."""
        return [dict(zip(self.columns, row)) for row in self.rows]


def read_star_blocks(path: Path, dir_fd: int | None = None) -> dict[str, Table]:
    """Return ``{block name: table}`` of a STAR file, blocks in file order. The file is opened
    once and read through that descriptor only (what is checked is what is read). With
    ``dir_fd`` (a descriptor of ``path``'s directory), the name is opened there, and a symbolic
    link is refused.

    Raises:
        StarFormatError: the file is missing or cannot be parsed; :class:`EmptyStarError` (one
            of them) when it is empty.
    """
    descriptor = open_regular_file(path, "a STAR file", StarFormatError, dir_fd=dir_fd)
    try:
        size = os.fstat(descriptor).st_size
        if size == 0:
            raise EmptyStarError(f"{path}: the STAR file is empty")
        if size > MAX_STAR_BYTES:
            raise StarFormatError(f"{path}: not a readable STAR file ({size / 2**20:.0f} MiB, more than the "
                                  f"{MAX_STAR_BYTES / 2**20:.0f} MiB a STAR file of movies is read up to)")
        with open(descriptor, "rb", buffering=io.DEFAULT_BUFFER_SIZE, closefd=False) as stream:
            blocks = _parse(stream)
    except _ParseError as exc:
        raise StarFormatError(f"{path}: not a readable STAR file ({exc})") from None
    except OSError as exc:
        raise StarFormatError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(descriptor)
    if not blocks:
        raise StarFormatError(f"{path}: the STAR file holds no data block")
    return blocks


class _ParseError(Exception):
    """What is wrong with the file (the caller adds its name)."""


def _text_lines(stream: BinaryIO) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a file, each line stripped of white space at both ends (lines
    end at LF, CR+LF or CR, as in Python's universal newlines)."""
    number = 0
    n_bytes = 0
    while True:
        raw = stream.readline(MAX_LINE_BYTES + 2)
        if not raw:
            return
        n_bytes += len(raw)
        if len(raw.rstrip(b"\r\n")) > MAX_LINE_BYTES:
            raise _ParseError(f"line {number + 1} is longer than {MAX_LINE_BYTES // 2**20} MiB")
        if n_bytes > MAX_STAR_BYTES:
            raise _ParseError(f"more than {MAX_STAR_BYTES // 2**20} MiB")
        if b"\0" in raw:
            raise _ParseError(f"line {number + 1} holds a NUL byte: not a text file")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _ParseError(f"line {number + 1} is not UTF-8 text") from None
        if number == 0 and text.startswith("\ufeff"):
            text = text[1:]
        if text.endswith("\n"):
            text = text[:-2] if text.endswith("\r\n") else text[:-1]
        for piece in text.split("\r"):  # a CR alone ends a line too (str.splitlines would split at more)
            number += 1
            yield number, piece.strip()


#: Values pandas' read_csv (as starfile called it) took for missing, true and false.
_MISSING = frozenset({"nan", "NaN", "<NA>"})
_TRUE = frozenset({"True", "TRUE", "true"})
_FALSE = frozenset({"False", "FALSE", "false"})
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)")

#: One value of a loop row: a comment (``#`` at the start of a word) runs to the end of the line;
#: a quoted value ends at the quote that a space, a tab or the end of the line follows.
_VALUE = re.compile(r"""[ \t]*(?:(?P<comment>\#)|"(?P<double>.*?)"(?=[ \t]|\Z)|'(?P<single>.*?)'(?=[ \t]|\Z)"""
                    r"""|(?P<plain>[^ \t]+))""", re.DOTALL)


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text) is not None


def _typed_column(texts: list[str]) -> list[Any]:
    """One loop column's values, typed as pandas' ``read_csv`` then ``to_numeric`` typed them for
    starfile (the rules are in the module docstring)."""
    missing = [text in _MISSING for text in texts]
    present = [text for text, gone in zip(texts, missing) if not gone]
    any_missing = len(present) < len(texts)
    if not texts:
        return []
    if not any_missing and all(_WHOLE_NUMBER.fullmatch(text) for text in present):
        return [int(text) for text in texts]
    if all(_WHOLE_NUMBER.fullmatch(text) for text in present):  # whole numbers and missing values
        return [math.nan if gone else float(int(text)) for text, gone in zip(texts, missing)]  # -0: 0.0
    if all(_is_number(text) for text in present):  # read_csv: a float column
        return [math.nan if gone else float(text) for text, gone in zip(texts, missing)]
    if all(text in _TRUE or text in _FALSE for text in present):
        if not any_missing:
            return [text in _TRUE for text in texts]
        return [math.nan if gone else float(text in _TRUE) for text, gone in zip(texts, missing)]
    # read_csv: text; to_numeric makes it float if every value is a number or empty, not all empty
    if all(text == "" or _is_number(text) for text in present) and any(text != "" for text in present):
        return [math.nan if gone or text == "" else float(text) for text, gone in zip(texts, missing)]
    return [math.nan if gone else text for text, gone in zip(texts, missing)]


def _loop_row(line: str, number: int) -> list[str]:
    """The values of one loop row."""
    values = []
    position = 0
    while position < len(line):
        match = _VALUE.match(line, position)
        if match is None or match.group("comment"):
            break
        plain = match.group("plain")
        if plain is not None and plain[0] in "\"'":
            raise _ParseError(f"line {number}: the quote of {plain} is not closed (a quoted value ends at a quote "
                              "that a space or the end of the line follows)")
        values.append(plain if plain is not None else
                      match.group("double") if match.group("double") is not None else match.group("single"))
        position = match.end()
    return values


def _key_value(line: str, number: int) -> tuple[str, Any]:
    """A key/value line, split as starfile split it (``shlex.split``), the value as a number if
    Python reads it as one."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise _ParseError(f"line {number}: {exc}") from None
    if len(words) != 2:
        raise _ParseError(f"line {number}: {len(words)} words where a name and a value were expected")
    label, text = words
    value: Any = text
    try:
        value = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            pass
    return label[1:], value


class _Block:
    """A block being read."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.kind: str | None = None  # "loop" or "pairs" once its table starts
        self.columns: list[str] = []
        self.rows: list[list[str]] = []  # a loop's values as written
        self.values: list[Any] = []  # a key/value block's values
        self.in_labels = False

    def add_label(self, label: str, number: int) -> None:
        if label in self.columns:
            raise _ParseError(f"line {number}: the label _{label} is given twice in data_{self.name}")
        self.columns.append(label)

    def add_pair(self, line: str, number: int) -> None:
        label, value = _key_value(line, number)
        if label in self.columns:  # the last value counts, as in starfile
            self.values[self.columns.index(label)] = value
        else:
            self.columns.append(label)
            self.values.append(value)

    def table(self) -> Table:
        if self.kind is None:
            raise _ParseError("a data_ block holds no table")
        if self.kind == "pairs":
            return Table(tuple(self.columns), [tuple(self.values)], is_loop=False)
        typed = [_typed_column(list(texts)) for texts in zip(*self.rows)] if self.rows else []
        return Table(tuple(self.columns), list(zip(*typed)) if typed else [])


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"


def _parse(stream: BinaryIO) -> dict[str, Table]:
    """The blocks of a STAR file (the grammar is in the module docstring)."""
    blocks: dict[str, Table] = {}
    block: _Block | None = None

    def finish() -> None:
        if block is not None:
            blocks[block.name] = block.table()

    for number, line in _text_lines(stream):
        if line.startswith("data_"):
            finish()
            name = line[5:]
            if name in blocks:
                raise _ParseError(f"line {number}: a second block named data_{name}")
            block = _Block(name)
            continue
        if block is None or not line or line.startswith("#"):
            continue
        if block.kind is None:
            if line.startswith("loop_"):
                block.kind, block.in_labels = "loop", True
            elif line.startswith("_"):
                block.kind = "pairs"
                block.add_pair(line, number)
            continue  # anything else before the table is skipped, as starfile skipped it
        if line.startswith("loop_"):
            raise _ParseError(f"line {number}: a second table (loop_) in data_{block.name}")
        if block.kind == "pairs":
            if line.startswith("_"):
                block.add_pair(line, number)
            continue
        if block.in_labels and line.startswith("_"):
            block.add_label(line.split()[0][1:], number)
            continue
        block.in_labels = False
        values = _loop_row(line, number)
        if not values:
            continue
        if len(values) > len(block.columns):
            raise _ParseError(f"line {number}: {_count(len(values), 'value')} for the "
                              f"{_count(len(block.columns), 'label')} of data_{block.name}")
        block.rows.append(values + [""] * (len(block.columns) - len(values)))  # as pandas filled them
    finish()
    return blocks


def movie_table_name(blocks: dict[str, Table]) -> str:
    """RELION's choice: the ``movies`` table if it has rows, else the first table."""
    if "movies" in blocks and len(blocks["movies"]) > 0:
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
    return movie_names(read_star_blocks(path), path)


def movie_names(blocks: dict[str, Table], path: Path) -> list[str]:
    """:func:`read_movie_names` of the ``blocks`` read from ``path`` (:func:`read_star_blocks`).

    Raises:
        StarFormatError: as :func:`read_movie_names`.
    """
    if "movies" in blocks and len(blocks["movies"]) == 0:
        raise EmptyStarError(f"{path}: the movies table lists no movie")
    table = blocks[movie_table_name(blocks)]
    if MOVIE_NAME_COLUMN not in table.columns:
        raise StarFormatError(f"{path}: the input STAR file does not contain the {MOVIE_NAME_COLUMN} column")
    names = [str(name).strip() for name in table[MOVIE_NAME_COLUMN]]
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
    path: Path, blocks: Mapping[str, Sequence[Mapping[str, Any]]], header_lines: Sequence[str],
    dir_fd: int | None = None,
) -> None:
    """Write ``blocks`` (``{block name: rows}``, each row ``{column: value}``) as a STAR file of
    loop tables, atomically, as the movies are written
    (:func:`cryotiff.io.atomic.write_bytes_atomically`); with ``dir_fd``, into the directory
    that descriptor holds (``path``'s, as the run checked it), else ``path``'s as it leads now.

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
    data = "".join(line + "\n" for line in lines).encode()
    if dir_fd is None:
        for stale in temporaries_of(Path(path)):  # left by a run killed while it wrote this file
            remove_if_stale(stale)
    else:
        remove_stale_temporaries(Path(path), dir_fd)
    write_bytes_atomically(path, data, fsync=True, directory=dir_fd)
