"""``<o>/movies.star``: the converted movies listed for re-import into RELION.

:func:`write_movies_star` lists the converted movies so that re-import is one step: the input
STAR file's optics table is kept, ``rlnMicrographMovieName`` points to the ``.tif`` files, and
only movies that converted (or were already complete) are listed.

Like the rest of the library this module never prints: it returns what happened and the CLI
prints it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .convert import MOVIE_SUFFIXES, MovieResult
from .io.star import MOVIE_NAME_COLUMN, movie_table_name, read_star_blocks, write_star_atomically

MOVIES_STAR_NAME = "movies.star"

#: ``--eer_upsampling`` -> TIFF pixel size / physical pixel size.
EER_PIXEL_SIZE_FACTOR = {1: 1.0, 2: 0.5, 3: 0.25, -1: 2.0}

#: Optics columns that hold a pixel size of the movie as written (scaled for up-sampled EER).
OPTICS_PIXEL_SIZE_COLUMNS = ("rlnMicrographOriginalPixelSize",)


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
    write_star_atomically(destination, blocks_out)
    outcome.path = destination
    outcome.n_movies = len(records)
    outcome.has_optics = optics is not None
    return outcome

