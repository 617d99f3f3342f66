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
