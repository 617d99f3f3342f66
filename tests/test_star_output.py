"""STAR output without pandas: cryotiff.io.star writes tables as starfile writes them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starfile.writer import StarWriter

from cryotiff.errors import OutputError
from cryotiff.io.star import format_loop_block, read_star_blocks, write_star_atomically

COLUMNS = ["rlnMicrographMovieName", "rlnOpticsGroup", "rlnVoltage", "rlnOpticsGroupName", "rlnFlag", "rlnX"]

#: The kinds of values a movies table holds after starfile read it (pandas gives them back as
#: Python or numpy scalars) or cryotiff made them: text (with spaces, empty, quotes), whole and
#: fractional numbers, true/false, missing values.
values = st.one_of(
    st.text(alphabet="ab _-./\"'x0", max_size=6),
    st.integers(-10**6, 10**6),
    st.integers(0, 300).map(np.int64),
    st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e9, max_value=1e9),
    st.just(math.nan),
    st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-1e4, max_value=1e4).map(np.float32),
    st.booleans(),
    st.none(),
)
tables = st.integers(1, 3).flatmap(
    lambda n_columns: st.lists(
        st.fixed_dictionaries({column: values for column in COLUMNS[:n_columns]}), min_size=1, max_size=4
    )
)


def starfile_lines(name: str, rows: list[dict]) -> list[str]:
    return list(StarWriter({name: pd.DataFrame(rows)}).data_block_generator())


@settings(max_examples=300, deadline=None, database=None)
@given(rows=tables)
def test_tables_are_written_as_starfile_writes_them(rows) -> None:
    assert list(format_loop_block("movies", rows)) == starfile_lines("movies", rows)


@pytest.mark.parametrize("column", [
    ["a b", "", "x"],                 # text: quoted when it holds a space or is empty
    [1, 2, 3],                        # whole numbers
    [1, 2.5, np.int64(3)],            # a fraction makes the column float
    [1, None, 3],                     # so does a missing value
    [True, False, True],
    [True, None, False],
    [1, "x", 2.25, True],             # mixed kinds: each value as text
    [math.nan, math.nan, 0.5],
    [np.float32(0.1), np.float32(2), np.float32(-0.0)],
])
def test_each_kind_of_column(column) -> None:
    rows = [{"rlnX": value, "rlnMicrographMovieName": f"m{k}.tif"} for k, value in enumerate(column)]
    assert list(format_loop_block("movies", rows)) == starfile_lines("movies", rows)


def test_written_file_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "movies.star"
    optics = [{"rlnOpticsGroupName": "opticsGroup1", "rlnOpticsGroup": 1, "rlnVoltage": 300.0}]
    movies = [{"rlnMicrographMovieName": "out/a b.tif", "rlnOpticsGroup": 1},
              {"rlnMicrographMovieName": "out/c.tif", "rlnOpticsGroup": 1}]
    write_star_atomically(path, {"optics": optics, "movies": movies}, ["# Written by a test"])
    text = path.read_text()
    assert text.startswith("# Written by a test\n\n\ndata_optics\n")
    blocks = read_star_blocks(path)
    assert list(blocks["movies"]["rlnMicrographMovieName"]) == ["out/a b.tif", "out/c.tif"]
    assert blocks["optics"]["rlnVoltage"] == [300.0]


def test_a_tab_or_line_break_in_a_value_is_refused(tmp_path: Path) -> None:
    for name in ("a\tb.tif", "a\nb.tif"):
        with pytest.raises(OutputError, match="tab or a line break"):
            write_star_atomically(tmp_path / "movies.star", {"movies": [{"rlnMicrographMovieName": name}]}, ["# x"])
        assert not list(tmp_path.iterdir())
