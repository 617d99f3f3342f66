"""Reading STAR files: what cryotiff.io.star reads (movie STAR files, the lists an earlier run
wrote), compared with what it wrote before it had a reader of its own."""

from __future__ import annotations

from pathlib import Path

from cryotiff import __version__
from cryotiff.convert import MovieResult
from cryotiff.movies_star import write_movies_star

#: A movie STAR file whose optics and movies tables hold every kind of value: whole numbers (with a
#: sign, leading zeros), numbers with a fraction or an exponent, a missing value (nan, <NA>),
#: true/false, text (quoted, with a space), a column of numbers and text, a trailing comment.
TYPED_STAR = """# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographOriginalPixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
_rlnAmplitudeContrast #6
_rlnMtfFileName #7
_rlnImagePixelSize #8
_rlnCustomCode #9
_rlnCustomFlag #10
_rlnCustomMixed #11
opticsGroup1 1 0.885 300 2.7 1e-1 'mtf k2.star' nan 007 True 1
"opticsGroup 2" +2 1.77 200 -0 0.1 mtf_k3.star 1.5 -12 False x


# version 30001

data_movies

loop_
_rlnMicrographMovieName #1
_rlnOpticsGroup #2
_rlnCustomDose #3
_rlnCustomNote #4
Movies/a.mrc 1 1. "a note"
Movies/b.mrc 2 2.5E+1 plain   # a trailing comment
Movies/c.mrc 1 -3 <NA>
"""

#: movies.star as cryotiff wrote it from TYPED_STAR when it read STAR files through starfile.
OPTICS_WRITTEN = """# Written by cryotiff VERSION: the converted movies. A later cryotiff run into this directory merges its movies into this file.


data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographOriginalPixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
_rlnAmplitudeContrast #6
_rlnMtfFileName #7
_rlnImagePixelSize #8
_rlnCustomCode #9
_rlnCustomFlag #10
_rlnCustomMixed #11
opticsGroup1\t1\t0.885000\t300\t2.700000\t0.100000\t"mtf k2.star"\t<NA>\t7\tTrue\t1
"opticsGroup 2"\t2\t1.770000\t200\t-0.000000\t0.100000\tmtf_k3.star\t1.500000\t-12\tFalse\tx


data_movies

loop_
_rlnMicrographMovieName #1
_rlnOpticsGroup #2
_rlnCustomDose #3
_rlnCustomNote #4
"""
FIRST_MOVIES = """out/Movies/a.tif\t1\t1.000000\t"a note"
out/Movies/b.tif\t2\t25.000000\tplain
out/Movies/c.tif\t1\t-3.000000\t<NA>
"""
SECOND_MOVIES = """out/Movies/d.tif\t1\t1.000000\t"a note"
out/Movies/f.tif\t1\t-3.000000\t<NA>
"""


def converted(out: Path, *names: str) -> list[MovieResult]:
    return [MovieResult(Path(name), out / Path(name).with_suffix(".tif"), "converted") for name in names]


def test_movies_star_of_float_int_and_text_columns_is_written_as_before(in_tmp: Path) -> None:
    """The bytes of movies.star from a STAR file of every kind of value, and after a second run
    that reads it back and merges (its optics group 1 equal to the first's, written 0.8850)."""
    Path("in.star").write_text(TYPED_STAR)
    Path("more.star").write_text(TYPED_STAR.replace("Movies/a.mrc", "Movies/d.mrc").replace("Movies/c.mrc", "Movies/f.mrc")
                                 .replace("0.885", "0.8850"))
    out = Path("out")
    out.mkdir()
    head = OPTICS_WRITTEN.replace("VERSION", __version__)
    outcome = write_movies_star(["in.star"], converted(out, "Movies/a.mrc", "Movies/b.mrc", "Movies/c.mrc"), out)
    assert (outcome.n_movies, outcome.warnings) == (3, [])
    assert (out / "movies.star").read_text() == head + FIRST_MOVIES + "\n\n"
    outcome = write_movies_star(["more.star"], converted(out, "Movies/d.mrc", "Movies/f.mrc"), out)
    assert (outcome.n_movies, outcome.n_from_earlier, outcome.warnings) == (5, 3, [])
    assert (out / "movies.star").read_text() == head + FIRST_MOVIES + SECOND_MOVIES + "\n\n"


# --------------------------------------------------------------------------- starfile as the oracle
#
# Generated STAR files (loop and key/value blocks, every kind of value, quoting, comments, blank
# lines, CR+LF, several blocks) are read by cryotiff.io.star and by starfile (the reader cryotiff
# used until 2026-12, which gave the values the outputs were made of): the blocks must be equal,
# value for value and type for type. The cases where starfile was plainly wrong are left out
# here and listed in test_where_starfile_was_wrong.

import linecache  # noqa: E402
import re  # noqa: E402
import math  # noqa: E402
import warnings  # noqa: E402

import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cryotiff.errors import StarFormatError  # noqa: E402
from cryotiff.io.star import Table, read_star_blocks  # noqa: E402


def starfile_blocks(path: Path) -> dict[str, Table]:
    """starfile's blocks of ``path`` in the structure cryotiff.io.star returns."""
    import starfile

    linecache.clearcache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blocks = starfile.read(path, always_dict=True)
    tables = {}
    for name, block in blocks.items():
        if hasattr(block, "columns"):
            tables[name] = Table(tuple(block.columns), [tuple(row.values()) for row in block.to_dict("records")])
        else:
            tables[name] = Table(tuple(block), [tuple(block.values())], is_loop=False)
    return tables


def comparable(blocks: dict[str, Table]) -> list:
    """Blocks as plain data in which equal values compare equal: each value with its type (bool,
    int, float, str), NaN as a marker, a float's sign (-0.0)."""
    def value(v):
        if isinstance(v, float):
            return ("float", "nan") if math.isnan(v) else ("float", v, math.copysign(1.0, v))
        return (type(v).__name__, v)
    return [(name, table.columns, table.is_loop, [tuple(value(v) for v in row) for row in table.rows])
            for name, table in blocks.items()]


#: Values as written in a STAR file, by kind: pandas types a column by the kinds in it.
WHOLE = st.one_of(st.integers(-10**12, 10**12).map(str), st.sampled_from(["+1", "-0", "007", "+0", "-12", "0"]),
                  st.integers(-2**63, 2**63 - 1).map(str))
FRACTION = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: f"{x:.6f}"),
    st.sampled_from(["1.", ".5", "-.5", "1e3", "1E3", "2.5E+1", "1e-400", "1e400", "0.885", "-0.0", "inf", "-inf",
                     "Inf", "INFINITY", "+Infinity", "1.e1", "300.000000"]),
)
MISSING = st.sampled_from(["nan", "NaN", "<NA>"])
TRUTH = st.sampled_from(["True", "False", "TRUE", "true", "FALSE", "false"])
NOT_MISSING = st.sampled_from(["NA", "NAN", "null", "None", "N/A", "-nan", "+nan", "T", "yes", "1_000", "0x10", "1d3",
                               "1e+", ".", "-", "e3", "1.2.3"])
WORD = st.text(alphabet="abcxyzé.-/+0123456789eE", min_size=1, max_size=8)
SPACED = st.text(alphabet="ab c.#\t-é/", min_size=0, max_size=8)  # needs quotes: spaces, '#', empty
EMPTY = st.just("")

KINDS = [WHOLE, FRACTION, MISSING, TRUTH, NOT_MISSING, WORD, SPACED, EMPTY]


@st.composite
def loop_values(draw, n_rows: int) -> list[str]:
    """One column's values: drawn from one to three kinds, so that columns mix kinds."""
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=3))
    return [draw(st.one_of(*kinds)) for _ in range(n_rows)]


def cell(value: str, quote: str | None) -> str:
    return f"{quote}{value}{quote}" if quote else value


@st.composite
def filler(draw, comments: bool = True) -> list[str]:
    """Blank lines, lines of white space, comment lines (none of them STAR syntax)."""
    lines = ["", "   ", "\t"] + (["# a comment", "#", "  # version 30001", "# x data y"] if comments else [])
    return draw(st.lists(st.sampled_from(lines), max_size=2))


@st.composite
def loop_block(draw, name: str) -> tuple[list[str], bool]:
    """The lines of a loop block, and whether comment lines may follow it (not after a loop
    without rows: starfile failed on a loop whose rows are all comments)."""
    n_columns = draw(st.integers(1, 4))
    labels = [f"rlnLabel{k}" for k in range(n_columns)]
    n_rows = draw(st.integers(0, 5))
    columns = [draw(loop_values(n_rows)) for _ in labels]
    lines = [f"data_{name}", *draw(filler()), draw(st.sampled_from(["loop_", "loop_ ", "loop_\t# labels"]))]
    lines += [draw(st.sampled_from([f"_{label}", f"_{label} #{k + 1}", f"_{label}\t#{k + 1} extra"]))
              for k, label in enumerate(labels)]
    lines += draw(filler(comments=n_rows > 0))
    for index, row in enumerate(zip(*columns)):
        if index > 0 and draw(st.integers(0, 9)) == 0:  # a short row: missing values at its end
            row = row[:draw(st.integers(1, len(row)))]
        elif draw(st.integers(0, 29)) == 0:  # a row too long: refused by both
            row = row + ("1",)
        cells = []
        for value in row:
            must = value == "" or any(c in value for c in " \t#")
            quote = draw(st.sampled_from(["'", '"'])) if must or draw(st.integers(0, 5)) == 0 else None
            cells.append(cell(value, quote))
        separators = [draw(st.sampled_from([" ", "\t", "  ", " \t "])) for _ in cells]
        text = draw(st.sampled_from(["", " ", "\t"])) + "".join(c + s for c, s in zip(cells, separators)).rstrip(" \t")
        if draw(st.integers(0, 4)) == 0:
            text += draw(st.sampled_from(["  # a comment", "\t#", " # 'quoted' comment"]))
        lines.append(text)
        lines += draw(filler()) if draw(st.integers(0, 3)) == 0 else []
    return lines, n_rows > 0


#: Key/value values: one word as shlex splits it (quotes around spaces).
PAIR_VALUE = st.one_of(WHOLE, FRACTION, MISSING, TRUTH, NOT_MISSING, WORD,
                       st.text(alphabet="ab c.-", min_size=1, max_size=8).map(lambda v: f'"{v}"'))


@st.composite
def pairs_block(draw, name: str) -> tuple[list[str], bool]:
    n_pairs = draw(st.integers(1, 4))
    lines = [f"data_{name}", *draw(filler())]
    for k in range(n_pairs):
        lines.append(f"_rlnKey{k}" + draw(st.sampled_from([" ", "\t", "   "])) + draw(PAIR_VALUE))
        lines += draw(filler()) if draw(st.booleans()) else []
    return lines, True


@st.composite
def star_files(draw) -> bytes:
    names = draw(st.lists(st.sampled_from(["", "movies", "optics", "general", "TS_01", "a1"]), min_size=1, max_size=3,
                          unique=True))
    lines = draw(filler())
    for name in names:
        block, comments_may_follow = draw(st.one_of(loop_block(name), pairs_block(name)))
        lines += block + draw(filler(comments=comments_may_follow))
    ending = draw(st.sampled_from(["\n", "\r\n"]))
    text = ending.join(lines) + (ending if draw(st.booleans()) else "")
    return text.encode()


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=star_files())
def test_blocks_are_read_as_starfile_read_them(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("star") / "generated.star"
    path.write_bytes(data)
    try:
        expected = starfile_blocks(path)
    except Exception as exc:  # noqa: BLE001 - starfile refuses it: so must cryotiff
        with pytest.raises(StarFormatError, match="generated.star"):
            read_star_blocks(path)
        return
    assert comparable(read_star_blocks(path)) == comparable(expected), data.decode()


# --------------------------------------------------------------------------- where starfile was wrong

MOVIES_HEAD = "data_movies\nloop_\n_rlnMicrographMovieName #1\n"
TWO_LABELS = "data_movies\nloop_\n_rlnMicrographMovieName #1\n_rlnOpticsGroup #2\n"

#: (what, file, what cryotiff reads: {block: rows} or the words of its refusal, what starfile read:
#: {block: rows} or the exception it raised). The io/star.py docstring lists the same cases.
WHERE_STARFILE_WAS_WRONG = [
    ("a '#' inside a value", MOVIES_HEAD + "Movies/a#1.mrc\n",
     {"movies": [("Movies/a#1.mrc",)]}, {"movies": [("Movies/a",)]}),
    ("an apostrophe inside a value", MOVIES_HEAD + "Movies/Bob's.mrc\n",
     {"movies": [("Movies/Bob's.mrc",)]}, {"movies": [('Movies/Bob"s.mrc',)]}),
    ("doubled quotes inside quotes", MOVIES_HEAD + '"a""b.mrc"\n', {"movies": [('a""b.mrc',)]}, {"movies": [('a"b.mrc',)]}),
    ("text after a closing quote", MOVIES_HEAD + '"a"b.mrc\n', "the quote of \"a\"b.mrc is not closed",
     {"movies": [("ab.mrc",)]}),
    ("a first row shorter than the labels", TWO_LABELS + "a.mrc\nb.mrc 1\n",
     {"movies": [("a.mrc", math.nan), ("b.mrc", 1.0)]}, ValueError),
    ("a first row shorter than the labels, of text", TWO_LABELS + "a.mrc\nb.mrc x\n",
     {"movies": [("a.mrc", ""), ("b.mrc", "x")]}, ValueError),
    ("a label given twice", "data_movies\nloop_\n_rlnMicrographMovieName\n_rlnMicrographMovieName\na.mrc b.mrc\n",
     "line 4: the label _rlnMicrographMovieName is given twice in data_movies", "duplicate columns"),
    ("a block name given twice", MOVIES_HEAD + "a.mrc\n" + MOVIES_HEAD + "b.mrc\n", "line 5: a second block named data_movies",
     {"movies": [("b.mrc",)]}),
    ("a data_ line right after another", "data_optics\n" + MOVIES_HEAD + "a.mrc\n", "a data_ block holds no table",
     {"optics": [("a.mrc",)]}),
    ("a second loop_ in a block", MOVIES_HEAD + "a.mrc\nloop_\n_rlnOpticsGroup\n1\n",
     "line 5: a second table (loop_) in data_movies", {"movies": [("a.mrc",), ("loop_",), ("_rlnOpticsGroup",), ("1",)]}),
    ("a key/value block that a loop_ follows", "data_general\n_rlnTomoName TS_01\nloop_\n_rlnMicrographMovieName #1\na.mrc\n",
     "line 3: a second table (loop_) in data_general", {"general": [("TS_01", "#1")]}),
    ("a comment among the labels", "data_movies\nloop_\n_rlnMicrographMovieName #1\n# groups\n_rlnOpticsGroup #2\na.mrc 1\n",
     {"movies": [("a.mrc", 1)]}, ValueError),
    ("a blank line after loop_", "data_movies\nloop_\n\n_rlnMicrographMovieName #1\na.mrc\n",
     {"movies": [("a.mrc",)]}, ValueError),
    ("rows that are all comments", MOVIES_HEAD + "# none yet\n", {"movies": []}, Exception),
    ("lines ending in CR alone", MOVIES_HEAD.replace("\n", "\r") + "a.mrc\rb.mrc\r",
     {"movies": [("a.mrc",), ("b.mrc",)]}, {"movies": []}),
    ("a CR alone inside a line", MOVIES_HEAD + "a.mrc\rb.mrc\nc.mrc\n",
     {"movies": [("a.mrc",), ("b.mrc",), ("c.mrc",)]}, {"movies": [("a.mrc",), ("b.mrc",)]}),
    ("a whole number beyond a float", "data_\nloop_\n_rlnX\n1" + "0" * 400 + "\n", {"": [(10**400,)]}, OverflowError),
    ("whole numbers beyond 64 bits mixed", "data_\nloop_\n_rlnX\n9223372036854775808\n-1\n",
     {"": [(2**63,), (-1,)]}, {"": [("9223372036854775808",), ("-1",)]}),
    ("a coding comment", "# -*- coding: latin-1 -*-\n" + MOVIES_HEAD + "Movies/\u00e9.mrc\n",
     {"movies": [("Movies/\u00e9.mrc",)]}, {"movies": [("Movies/\u00c3\u00a9.mrc",)]}),
    ("a data line that is no block in a key/value block", "data_general\n_rlnA 1\ndatabase\n_rlnB 2\n",
     {"general": [(1, 2)]}, {"general": [(1,)]}),
]


def rows_of(blocks: dict[str, Table]) -> dict[str, list]:
    return {name: comparable({name: table})[0][3] for name, table in blocks.items()}


def as_rows(expected: dict[str, list]) -> dict[str, list]:
    return rows_of({name: Table(("x",) * len(rows[0]) if rows else (), rows) for name, rows in expected.items()})


@pytest.mark.parametrize("what, text, ours, theirs", WHERE_STARFILE_WAS_WRONG, ids=[case[0] for case in WHERE_STARFILE_WAS_WRONG])
def test_where_starfile_was_wrong(tmp_path: Path, what: str, text: str, ours, theirs) -> None:
    """What cryotiff reads where starfile was plainly wrong, and what starfile read."""
    path = tmp_path / "odd.star"
    path.write_bytes(text.encode())
    if isinstance(ours, str):
        with pytest.raises(StarFormatError, match=f"^{path}: not a readable STAR file \\(.*{re.escape(ours)}"):
            read_star_blocks(path)
    else:
        assert rows_of(read_star_blocks(path)) == as_rows(ours)
    if theirs == "duplicate columns":
        import starfile

        assert list(starfile.read(path, always_dict=True)["movies"].columns) == ["rlnMicrographMovieName"] * 2
    elif isinstance(theirs, type):
        with pytest.raises(theirs):
            starfile_blocks(path)
    else:
        assert rows_of(starfile_blocks(path)) == as_rows(theirs)


# --------------------------------------------------------------------------- damaged STAR files

from .test_bad_input import expect_one_clean_failure  # noqa: E402

DAMAGED = {
    "nul": (MOVIES_HEAD.encode() + b"last.mrc\0\n", "line 4 holds a NUL byte: not a text file"),
    "binary": (bytes(range(256)) * 64, "line 1 holds a NUL byte: not a text file"),
    "latin-1": (MOVIES_HEAD.encode() + "Movies/\u00e9.mrc\n".encode("latin-1"), "line 4 is not UTF-8 text"),
    "utf-16": (MOVIES_HEAD.encode("utf-16"), "line 1 holds a NUL byte: not a text file"),
    "long row": ((TWO_LABELS + "first.mrc 1\nlast.mrc 1 2\n").encode(), "line 6: 3 values for the 2 labels of data_movies"),
    "long first row": ((MOVIES_HEAD + "first.mrc 1\n").encode(), "line 4: 2 values for the 1 label of data_movies"),
    "label twice": (MOVIES_HEAD.encode() + b"_rlnMicrographMovieName #2\nfirst.mrc last.mrc\n",
                    "line 4: the label _rlnMicrographMovieName is given twice in data_movies"),
    "quote not closed": (MOVIES_HEAD.encode() + b"'first.mrc\n", "line 4: the quote of 'first.mrc is not closed"),
    "pair not closed": (b"data_general\n_rlnTomoName 'TS 01\n", "line 2: No closing quotation"),
    "pair with a comment": (b"data_\n_rlnMicrographMovieName a.mrc # the movie\n",
                            "line 2: 5 words where a name and a value were expected"),
}


@pytest.mark.parametrize("kind", list(DAMAGED))
def test_a_damaged_star_file_is_one_message_naming_it(in_tmp: Path, capsys, kind: str) -> None:
    """Among good movies: one ERROR line naming the STAR file and the line, no traceback, the
    other movies converted, exit status 1 (the file was named twice: when the inputs were read and
    again when movies.star was written, which then listed no movie)."""
    data, message = DAMAGED[kind]
    Path("bad.star").write_bytes(data)
    [error] = expect_one_clean_failure(capsys, "bad.star", message)
    assert error.startswith(f"ERROR: bad.star: not a readable STAR file ({message}") and error.endswith(")"), error


def test_a_line_of_50_mb_is_refused_after_reading_1_mib_of_it(tmp_path: Path) -> None:
    """Memory (Python's allocations, tracemalloc) stays a few MiB while the line is refused."""
    import tracemalloc

    path = tmp_path / "long.star"
    with path.open("wb") as stream:
        stream.write(MOVIES_HEAD.encode())
        stream.write(b"x" * (50 << 20) + b"\n")
    tracemalloc.start()
    try:
        with pytest.raises(StarFormatError, match=r"long\.star: not a readable STAR file \(line 4 is longer than 1 MiB\)"):
            read_star_blocks(path)
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak_bytes < 8 << 20, peak_bytes


def test_a_star_file_over_1_gib_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.star"
    with path.open("wb") as stream:
        stream.truncate(3 << 30)  # sparse: no disk space
    with pytest.raises(StarFormatError, match=r"huge\.star: not a readable STAR file \(3072 MiB, more than the 1024 MiB"):
        read_star_blocks(path)


def test_a_utf8_byte_order_mark_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "windows.star"
    path.write_bytes(b"\xef\xbb\xbf" + (MOVIES_HEAD + "Movies/a.mrc\n").replace("\n", "\r\n").encode())
    assert read_star_blocks(path)["movies"]["rlnMicrographMovieName"] == ["Movies/a.mrc"]


def test_a_short_row_is_a_movie_without_its_optics_group(in_tmp: Path, capsys) -> None:
    """As with starfile: the movie of a row without its rlnOpticsGroup converts and is listed in
    movies_unassigned.star, with a warning; the others keep their group."""
    from cryotiff.cli import main

    from .helpers import int16_movie

    int16_movie("a.mrc", 1)
    int16_movie("b.mrc", 2)
    Path("in.star").write_text("data_optics\nloop_\n_rlnOpticsGroupName #1\n_rlnOpticsGroup #2\n_rlnVoltage #3\n"
                               "_rlnSphericalAberration #4\n_rlnMicrographOriginalPixelSize #5\nopticsGroup1 1 300 2.7 1.0\n\n"
                               + TWO_LABELS + "a.mrc 1\nb.mrc\n")
    assert main(["--i", "in.star", "--o", "out"]) == 0
    captured = capsys.readouterr()
    assert "its optics group is not defined in in.star" in captured.err, captured.err
    assert read_star_blocks(Path("out/movies.star"))["movies"]["rlnMicrographMovieName"] == ["out/a.tif"]
    assert read_star_blocks(Path("out/movies_unassigned.star"))["movies"]["rlnMicrographMovieName"] == ["out/b.tif"]


def test_a_table_answers_for_its_columns(tmp_path: Path) -> None:
    """``column in table`` and ``table[column]`` are about the columns (a Table is no list of
    rows to ``in``)."""
    path = tmp_path / "movies.star"
    path.write_text(TWO_LABELS + "a.mrc 1\n")
    table = read_star_blocks(path)["movies"]
    assert "rlnOpticsGroup" in table and "rlnVoltage" not in table
    assert table["rlnOpticsGroup"] == [1] and table.records() == [{"rlnMicrographMovieName": "a.mrc", "rlnOpticsGroup": 1}]
    with pytest.raises(KeyError):
        table["rlnVoltage"]
