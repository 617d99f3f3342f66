"""STAR files in and out through starfile (imported lazily: it pulls in pandas).

Input: the ``movies`` table of a RELION 3.1+ movie STAR file, else the first table (RELION 3.0
files have one unnamed ``data_`` block), column ``rlnMicrographMovieName``. CR+LF line ends are
accepted (RELION rejects them).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

from ..errors import StarFormatError
from . import check_regular_file
from .atomic import write_bytes_atomically

MOVIE_NAME_COLUMN = "rlnMicrographMovieName"


def read_star_blocks(path: Path) -> dict[str, Any]:
    """Return ``{block name: table}`` of a STAR file (tables are pandas DataFrames or dicts).

    Raises:
        StarFormatError: the file is missing, empty or cannot be parsed.
    """
    if check_regular_file(path, "a STAR file", StarFormatError) == 0:
        raise StarFormatError(f"{path}: the STAR file is empty")
    import linecache

    import starfile

    # starfile reads lines through linecache and clears it only after a successful parse: after a
    # failed one, a later read of the same file name would get the old lines.
    linecache.clearcache()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True)
    except TypeError as exc:
        if "NoneType" not in str(exc):
            raise StarFormatError(f"{path}: not a readable STAR file ({exc})") from None
        # starfile's parse of a data_ line that no loop_ or _name line follows
        raise StarFormatError(f"{path}: not a readable STAR file (a data_ block holds no table)") from None
    except Exception as exc:
        raise StarFormatError(f"{path}: not a readable STAR file ({exc})") from None
    finally:
        linecache.clearcache()
    if not blocks:
        raise StarFormatError(f"{path}: the STAR file holds no data block")
    return blocks


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
            without rows (RELION then looks in the first table and gives the column message).
    """
    blocks = read_star_blocks(path)
    if "movies" in blocks and _n_rows(blocks["movies"]) == 0:
        raise StarFormatError(f"{path}: the movies table lists no movie")
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
        raise StarFormatError(f"{path}: the movies table lists no movie")
    return names


def write_star_atomically(path: Path, blocks: dict[str, Any], header_lines: Sequence[str] | None = None) -> None:
    """Write ``blocks`` as a STAR file atomically, as the movies are written
    (:func:`cryotiff.io.atomic.write_bytes_atomically`).

    ``header_lines`` (comment lines, each starting with ``#``) open the file instead of
    starfile's "Created by" line. RELION takes any line holding ``data_`` for the start of a block
    and ``# version N`` for the file's version (``MetaDataTable::readStar`` in RELION's
    ``src/metadata_table.cpp``), so header lines must hold neither.

    Raises:
        OutputError: the file cannot be written.
    """
    from starfile.writer import StarWriter

    writer = StarWriter(blocks)
    lines = list(header_lines) if header_lines is not None else [next(iter(writer.lines()))]
    text = "".join(line + "\n" for line in [*lines, "", "", *writer.data_block_generator()])
    write_bytes_atomically(path, text.encode())
