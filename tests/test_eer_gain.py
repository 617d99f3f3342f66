"""EER gain conversion (cryotiff.eer_gain): orientation, inversion, resizing, defects, errors."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

from cryotiff import eer_gain as G
from cryotiff.errors import GainError, OptionError


def _gain(rng: np.random.Generator, n: int, zeros: int = 5) -> np.ndarray:
    g = rng.uniform(0.5, 1.5, size=(n, n)).astype(np.float32)
    g.flat[rng.choice(n * n, zeros, replace=False)] = 0.0  # defects
    return g


def _write_mrc(path: Path, data: np.ndarray) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
    return path


def _write_tiff(path: Path, data: np.ndarray) -> Path:
    tifffile.imwrite(path, data, photometric="minisblack")
    return path


def _inverse(g: np.ndarray) -> np.ndarray:
    """RELION: mean in double over all pixels (zeros included), mean / g where g != 0."""
    mean = g.astype(np.float64).sum() / g.size
    out = np.zeros_like(g, dtype=np.float64)
    nz = g != 0
    out[nz] = mean / g[nz].astype(np.float64)
    return out.astype(np.float32)


def test_messages() -> None:
    assert G.TAKING_INVERSE_MESSAGE == "Taking inverse and re-scaling (when necessary)."
    assert G.NO_GAIN_WARNING == (
        "WARNING: Note that an EER gain reference is the inverse of those expected for TIFF "
        "movies. You can convert your gain reference file with --gain option."
    )
    assert G.gain_read_message("g.gain", 4096, 4096) == "Read an EER gain file g.gain NX = 4096 NY = 4096"
    assert G.is_multiplicative_gain_path("a/b.gain")
    assert not G.is_multiplicative_gain_path("b.GAIN") and not G.is_multiplicative_gain_path("b.gain.mrc")


def test_dot_gain_is_multiplicative_in_file_row_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    g = _gain(rng, 64)
    path = _write_tiff(tmp_path / "ref.gain", g)
    result = G.convert_eer_gain(path, 64, 1)
    assert result.gain.dtype == np.float32
    np.testing.assert_array_equal(result.gain, g)  # row 0 = file row 0, not inverted
    assert result.multiplicative_input and result.resampling == "copy"
    assert (result.input_nx, result.input_ny, result.output_size) == (64, 64, 64)
    assert result.n_defects == 5
    assert result.messages() == [f"Read an EER gain file {path} NX = 64 NY = 64"]


def test_mrc_gain_is_divisive_and_inverted(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    g = _gain(rng, 64)
    path = _write_mrc(tmp_path / "ref.mrc", g)
    result = G.convert_eer_gain(path, 64, 1)
    np.testing.assert_array_equal(result.gain, _inverse(g))
    assert (result.gain == 0).sum() == 5 and ((g == 0) == (result.gain == 0)).all()
    assert not result.multiplicative_input
    assert result.messages() == [
        f"Read an EER gain file {path} NX = 64 NY = 64",
        "Taking inverse and re-scaling (when necessary).",
    ]
    # A stack: the first image is used.
    stack = _write_mrc(tmp_path / "stack.mrcs", np.stack([g, 2 * g]))
    np.testing.assert_array_equal(G.convert_eer_gain(stack, 64, 1).gain, _inverse(g))


def test_mrc_gain_is_read_as_leniently_as_relion_reads_it(tmp_path: Path) -> None:
    """EER gains in MRC go through cryotiff's own MRC reader, as the gains of MRC/TIFF movies
    do: a header without the "MAP " ID (mrcfile's strict reading refuses it; RELION does not
    check it) and an int16 gain are read; a truncated file is refused, naming it."""
    rng = np.random.default_rng(12)
    g = _gain(rng, 32)
    no_map_id = _write_mrc(tmp_path / "no-map-id.mrc", g)
    raw = bytearray(no_map_id.read_bytes())
    raw[208:212] = b"\0\0\0\0"
    no_map_id.write_bytes(bytes(raw))
    np.testing.assert_array_equal(G.convert_eer_gain(no_map_id, 32, 1).gain, _inverse(g))
    counts = np.rint(g * 10).astype(np.int16)
    as_int16 = _write_mrc(tmp_path / "int16.mrc", counts)
    np.testing.assert_array_equal(G.convert_eer_gain(as_int16, 32, 1).gain, _inverse(counts.astype(np.float32)))
    truncated = tmp_path / "truncated.mrc"
    truncated.write_bytes(no_map_id.read_bytes()[:-100])
    with pytest.raises(GainError, match=r"truncated\.mrc: cannot read the gain as MRC"):
        G.convert_eer_gain(truncated, 32, 1)


def test_plain_tiff_gain_keeps_relions_flip(tmp_path: Path) -> None:
    g = _gain(np.random.default_rng(3), 32)
    result = G.convert_eer_gain(_write_tiff(tmp_path / "ref.tif", g), 32, 1)
    np.testing.assert_array_equal(result.gain, _inverse(g[::-1]))


def test_upsampling_2_nearest_neighbour_and_copy(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    g = _gain(rng, 32)
    up = np.repeat(np.repeat(g, 2, axis=0), 2, axis=1)
    r = G.convert_eer_gain(_write_mrc(tmp_path / "g.mrc", g), 32, 2)
    np.testing.assert_array_equal(r.gain, _inverse(up))
    assert r.output_size == 64 and r.resampling == "nearest neighbour x2"
    assert r.messages()[0].endswith("NX = 64 NY = 64")  # RELION prints the converted size
    r = G.convert_eer_gain(_write_tiff(tmp_path / "g8.gain", up), 32, 2)
    np.testing.assert_array_equal(r.gain, up)


def test_downsampling_means_and_keeps_defects(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    g = rng.uniform(0.5, 1.5, size=(64, 64)).astype(np.float32)
    g[10, 11] = 0.0  # one defect sub-pixel: its whole 2x2 block is a defect
    blocks = g.reshape(32, 2, 32, 2).astype(np.float64)
    mean = blocks.mean(axis=(1, 3))
    mean[5, 5] = 0.0
    mean = mean.astype(np.float32)
    r = G.convert_eer_gain(_write_tiff(tmp_path / "g.gain", g), 32, 1)
    np.testing.assert_allclose(r.gain, mean, rtol=1e-6)  # mean, not RELION's 4x larger sum
    assert r.gain[5, 5] == 0 and r.n_defects == 1 and r.resampling == "2x2 block mean"
    r = G.convert_eer_gain(_write_mrc(tmp_path / "g.mrc", g), 32, 1)
    np.testing.assert_allclose(r.gain, _inverse(mean), rtol=1e-6)
    assert r.gain[5, 5] == 0
    # Without defects, RELION's 2x2 sum gives the same divisive result (the factor 4 cancels in
    # mean / G).
    clean = np.where(g == 0, 1.0, g).astype(np.float32)
    summed = clean.reshape(32, 2, 32, 2).astype(np.float64).sum(axis=(1, 3))
    relion = _inverse(summed.astype(np.float32))
    ours = G.convert_eer_gain(_write_mrc(tmp_path / "h.mrc", clean), 32, 1).gain
    np.testing.assert_allclose(ours, relion, rtol=1e-6)


def test_16k_and_2k_gains(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    det = 32
    g = _gain(rng, det)
    mult = _write_tiff(tmp_path / "g.gain", g)
    r = G.convert_eer_gain(mult, det, 3)  # 4x4 nearest neighbour
    np.testing.assert_array_equal(r.gain, np.kron(g, np.ones((4, 4), np.float32)))
    g2 = _gain(rng, 2 * det)
    r = G.convert_eer_gain(_write_tiff(tmp_path / "g2.gain", g2), det, 3)  # 2x2 from 2 det
    np.testing.assert_array_equal(r.gain, np.kron(g2, np.ones((2, 2), np.float32)))
    g4 = _gain(rng, 4 * det)
    r = G.convert_eer_gain(_write_tiff(tmp_path / "g4.gain", g4), det, 3)
    np.testing.assert_array_equal(r.gain, g4)
    r = G.convert_eer_gain(_write_mrc(tmp_path / "g.mrc", g), det, -1)  # 2K output
    assert r.gain.shape == (det // 2, det // 2)
    blocks = g.reshape(det // 2, 2, det // 2, 2)
    expected = blocks.astype(np.float64).mean(axis=(1, 3))
    expected[(blocks == 0).any(axis=(1, 3))] = 0
    np.testing.assert_allclose(r.gain, _inverse(expected.astype(np.float32)), rtol=1e-6)
    assert ((r.gain == 0) == (blocks == 0).any(axis=(1, 3))).all()


def test_real_4k_detector_with_4k_mrc_gain_at_8k(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    g4 = rng.uniform(0.8, 1.2, size=(4096, 4096)).astype(np.float32)
    g4[100, :] = 0.0  # a defect line
    r = G.convert_eer_gain(_write_mrc(tmp_path / "g4.mrc", g4), 4096, 2)
    assert r.gain.shape == (8192, 8192) and r.gain.dtype == np.float32
    np.testing.assert_array_equal(r.gain[::2, ::2], _inverse(g4))
    assert (r.gain[200:202] == 0).all() and r.n_defects == 2 * 8192
    assert r.messages()[0] == f"Read an EER gain file {tmp_path / 'g4.mrc'} NX = 8192 NY = 8192"


def test_wrong_sizes(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    with pytest.raises(GainError, match=r"odd\.mrc.*X = 48 Y = 48.*expected X = 64 Y = 64"):
        G.convert_eer_gain(_write_mrc(tmp_path / "odd.mrc", _gain(rng, 48)), 64, 1)
    with pytest.raises(GainError, match=r"half\.mrc.*X = 32 Y = 32 \(half the expected size\)"):
        G.convert_eer_gain(_write_mrc(tmp_path / "half.mrc", _gain(rng, 32)), 64, 1)
    big = _write_tiff(tmp_path / "big.gain", _gain(rng, 256))
    with pytest.raises(GainError, match=r"X = 256 Y = 256 \(twice the expected size\)"):
        G.convert_eer_gain(big, 32, 3)  # 4 det = 128 expected; 8 det given
    rect = np.ones((64, 128), np.float32)
    with pytest.raises(GainError, match=r"X = 128 Y = 64 \(not square"):
        G.convert_eer_gain(_write_mrc(tmp_path / "rect.mrc", rect), 64, 1)


def test_unreadable_gains(tmp_path: Path) -> None:
    with pytest.raises(GainError, match="missing.gain"):
        G.convert_eer_gain(tmp_path / "missing.gain", 64, 1)
    with pytest.raises(GainError, match="missing.mrc"):
        G.convert_eer_gain(tmp_path / "missing.mrc", 64, 1)
    bad = tmp_path / "bad.gain"
    bad.write_bytes(b"not a tiff" * 100)
    with pytest.raises(GainError, match="bad.gain"):
        G.convert_eer_gain(bad, 64, 1)
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(b"\0" * 100)
    with pytest.raises(GainError, match="bad.mrc"):
        G.convert_eer_gain(bad, 64, 1)
    dm4 = tmp_path / "g.dm4"
    dm4.write_bytes(b"\0" * 100)
    with pytest.raises(GainError, match=r"g\.dm4.*unsupported"):
        G.convert_eer_gain(dm4, 64, 1)
    nan = np.ones((64, 64), np.float32)
    nan[3, 3] = np.nan
    with pytest.raises(GainError, match="NaN"):
        G.convert_eer_gain(_write_tiff(tmp_path / "nan.tif", nan), 64, 1)
    with pytest.raises(GainError, match="zero everywhere"):
        G.convert_eer_gain(_write_mrc(tmp_path / "zero.mrc", np.zeros((64, 64), np.float32)), 64, 1)
    with pytest.raises(OptionError, match="eer_upsampling must be -1, 1, 2 or 3"):
        G.convert_eer_gain(_write_mrc(tmp_path / "ok.mrc", np.ones((64, 64), np.float32)), 64, 4)
