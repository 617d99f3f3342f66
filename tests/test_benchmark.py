"""``convert-to-tiff --benchmark``: the codec table (sizes, speeds, TIFF tags, readers, RELION's and
auto's choice). Speeds are printed, never asserted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryotiff import demo
from cryotiff.benchmark import BENCHMARK_CODECS, benchmark_codecs, codecs_for, format_benchmark_table
from cryotiff.cli import main
from cryotiff.convert import ConvertOptions
from cryotiff.simulate.detectors import counting_frames, falcon_frames
from cryotiff.simulate.write import write_mrc_movie


def tiny_movies(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    k2 = write_mrc_movie(directory / "k2.mrc", counting_frames(3, (48, 64), 0.96, np.int8, seed=1), 0)
    falcon = write_mrc_movie(directory / "falcon.mrc", falcon_frames(2, (16, 4096), seed=1), 6)
    return [k2, falcon]


def table_rows(text: str, movie: str) -> list[list[str]]:
    """The codec rows of one movie's table, split into columns."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(movie))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("  "):
            break
        rows.append(line.split())
    return rows


def test_benchmark_table_for_given_movies(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny_movies(Path("movies"))
    assert main(["--benchmark", "--i", "movies/k2.mrc", "movies/falcon.mrc"]) == 0
    out = capsys.readouterr().out
    assert "movies/k2.mrc: first 2 pages of 64 x 48 int8" in out
    assert "movies/falcon.mrc: first 2 pages of 4096 x 16 uint16" in out
    header = next(line for line in out.splitlines() if "codec" in line and "size %" in line)
    for column in ("encoder", "TIFF", "size %", "enc MB/s", "dec MB/s", "used by", "readers"):
        assert column in header
    for movie, relion in (("movies/k2.mrc", "lzw"), ("movies/falcon.mrc", "zlib-6")):
        rows = table_rows(out, movie)
        labels = [row[0] for row in rows]
        assert labels == list(BENCHMARK_CODECS)
        assert [row[0] for row in rows if "RELION" in " ".join(row)] == [relion]
        assert len([row for row in rows if "auto" in row]) == 1
        encoders = {row[0]: row[1] for row in rows}
        assert encoders["deflate-huffman"] == "cryotiff"  # the compiled Huffman-only encoder
        assert encoders["deflate-rle"] == "zlib-ng"
        assert encoders["zlib-6"] == "zlib" and encoders["deflate-1"] == "libdeflate"
        tags = {row[0]: int(row[2]) for row in rows}
        assert tags["lzw"] == 5 and tags["deflate-huffman"] == 8 and tags["zstd-3"] == 50000 and tags["lzma-1"] == 34925
        for row in rows:
            assert 0 < float(row[3]) < 200  # size %
        readers = {row[0]: " ".join(row) for row in rows}
        assert "all movie readers" in readers["deflate-huffman"]
        assert "not IMOD" in readers["zstd-3"]
    k2_auto = [row[0] for row in table_rows(out, "movies/k2.mrc") if "auto" in row]
    assert k2_auto == ["deflate-huffman"]
    assert "RELION, MotionCor2/3, cryoSPARC, Warp, IMOD" in out
    assert not Path("movies/k2.tif").exists()  # nothing is converted


def test_benchmark_without_inputs_uses_the_demo_movies(in_tmp: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "make_demo_movies", lambda directory: tiny_movies(directory))
    assert main(["--benchmark"]) == 0
    captured = capsys.readouterr()
    assert "benchmarking the synthetic demo movies" in captured.out
    assert "k2.mrc: first 2 pages" in captured.out and "falcon.mrc: first 2 pages" in captured.out


def test_a_movie_that_cannot_be_read_gets_an_error_row(in_tmp: Path) -> None:
    movies = tiny_movies(Path("movies"))
    Path("broken.mrc").write_bytes(b"not an MRC file")
    rows = benchmark_codecs([Path("broken.mrc"), movies[0]], ConvertOptions())
    assert rows[0].error and "broken.mrc" in rows[0].error
    assert [row.codec for row in rows[1:]] == list(BENCHMARK_CODECS)
    text = format_benchmark_table(rows)
    assert text.startswith("broken.mrc: ")
    assert "movies/k2.mrc: first 2 pages" in text


def test_rows_hold_exact_sizes(in_tmp: Path) -> None:
    movies = tiny_movies(Path("movies"))
    rows = benchmark_codecs(movies[:1], ConvertOptions())
    by_codec = {row.codec: row for row in rows}
    assert all(row.raw_bytes == 2 * 48 * 64 for row in rows)
    assert by_codec["deflate-huffman"].compressed_bytes < by_codec["lzw"].compressed_bytes
    assert by_codec["lzw"].is_relion and not by_codec["zlib-6"].is_relion


def test_the_requested_codec_is_added() -> None:
    assert codecs_for(ConvertOptions(compression="zstd:19"))[-1] == "zstd-19"
    assert codecs_for(ConvertOptions(compression="deflate", deflate_level=9))[-1] == "deflate-9"
    assert codecs_for(ConvertOptions(compression="zip", deflate_level=6)) == list(BENCHMARK_CODECS)
    assert codecs_for(ConvertOptions(compression="auto")) == list(BENCHMARK_CODECS)
    assert codecs_for(ConvertOptions(compression="none"))[-1] == "none"


def test_benchmark_with_line_by_line_encodes_rows(in_tmp: Path, capsys) -> None:
    tiny_movies(Path("movies"))
    assert main(["--benchmark", "--line_by_line", "--i", "movies/k2.mrc"]) == 0
    rows = table_rows(capsys.readouterr().out, "movies/k2.mrc")
    assert len([row for row in rows if "auto" in row]) == 1
