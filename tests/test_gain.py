"""Gain estimation, gain files, merge, integerisation and lossy mode (cryotiff.gain), and the
simulated gain-normalised movies they are tested on."""

from __future__ import annotations

import itertools
import math
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryotiff import gain as G
from cryotiff.errors import CryotiffError, GainError, UnexpectedPixelValueError
from cryotiff.simulate.gain_normalised import make_detector, simulate_gain_normalised
from tests.helpers import HANG_SECONDS, sigint_handler_that_says_so

F32 = np.float32
INT_MIN = -(2**31)

# ---------------------------------------------------------------------------------------------
# A plain per-pixel reference of RELION's TIFFConverter::estimate (src/tiff_converter.cpp; the rule in
# docs/relion-behaviour.md), with cryotiff's two deliberate differences marked
# ---------------------------------------------------------------------------------------------


def c_int_round(q: float) -> int:
    """(int)round(q) on x86-64: half away from zero; out of range or NaN -> INT_MIN."""
    if math.isnan(q) or math.isinf(q):
        return INT_MIN
    r = math.copysign(math.floor(abs(q) + 0.5), q)
    if not (-(2**31) <= r < 2**31):
        return INT_MIN
    return int(r)


def reference_update(gain: np.ndarray, rel: np.ndarray, frame: np.ndarray, thresh: int):
    gain, rel = gain.copy(), rel.copy()
    changed = mismatch = negative = 0
    with np.errstate(all="ignore"):
        for y in range(frame.shape[0]):
            for x in range(frame.shape[1]):
                v, g = F32(frame[y, x]), F32(gain[y, x])
                if v == 0:
                    continue
                if v < 0:
                    negative += 1
                    rel[y, x] = -1
                elif g > v:
                    gain[y, x] = v
                    changed += 1
                    rel[y, x] = 0
                else:
                    q = F32(v / g)
                    e = F32(g * F32(c_int_round(float(q))))
                    diff = F32(abs(F32(e - v)))
                    if not float(diff) <= 1e-4:  # cryotiff: NaN is a mismatch (RELION: "> 1e-4")
                        mismatch += 1
                        rel[y, x] = -1
                    elif rel[y, x] >= 0:
                        rel[y, x] = min(int(rel[y, x]) + 1, 32767)  # cryotiff: saturate (RELION wraps)
    stable = int(np.count_nonzero(rel >= thresh))
    return gain, rel, (changed, mismatch, negative, rel.size - stable, rel.size)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a.view(np.uint8), b.view(np.uint8)))


def stats_tuple(s: G.FrameStats) -> tuple[int, ...]:
    return (s.changed, s.mismatch, s.negative, s.unreliable, s.total)


SPECIAL_VALUES = [0.0, -0.0, -1.0, 1.0, 999.9, 1000.0, float(F32(999.9)), math.nan, math.inf, -math.inf,
                  1e-45, 3.4e38, 5e-5, 1.5, 2.5, 0.5, 2147483648.0, 1e10]
GAIN_POOL = [999.9, 1.0, 1.1, 0.97, 0.5, 2.0**-14, 1e-5, 1.25, 3.0, 1e-30, 0.0, math.nan]
REL_POOL = [-1, 0, 1, 2, 5, 49, 50, 32766, 32767]


@st.composite
def states_and_frames(draw):
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)))
    n = shape[0] * shape[1]
    gain = np.array(draw(st.lists(st.sampled_from(GAIN_POOL), min_size=n, max_size=n)), F32).reshape(shape)
    rel = np.array(draw(st.lists(st.sampled_from(REL_POOL), min_size=n, max_size=n)), np.int16).reshape(shape)
    frames = []
    for _ in range(draw(st.integers(1, 3))):
        values = []
        for i in range(n):
            kind = draw(st.integers(0, 3))
            if kind == 0:
                values.append(draw(st.sampled_from(SPECIAL_VALUES)))
            elif kind == 1:
                values.append(draw(st.floats(width=32, allow_nan=True, allow_infinity=True)))
            else:  # a multiple (or half multiple) of the current gain, computed in float32
                k = draw(st.sampled_from([-2, 1, 2, 3, 5, 2.5, 0.5, 1.5, 40]))
                with np.errstate(all="ignore"):
                    values.append(float(F32(k) * gain.reshape(-1)[i]))
        frames.append(np.array(values, F32).reshape(shape))
    return gain, rel, frames


@settings(max_examples=300, deadline=None)
@given(states_and_frames(), st.sampled_from([0, 1, 2, 50]))
def test_vectorised_update_equals_per_pixel_reference(case, thresh):
    gain, rel, frames = case
    estimate = G.GainEstimate(gain.copy(), rel.copy())
    ref_gain, ref_rel = gain, rel
    for frame in frames:
        stats = estimate.update(frame, thresh, block_rows=1)
        ref_gain, ref_rel, ref_stats = reference_update(ref_gain, ref_rel, frame, thresh)
        assert stats_tuple(stats) == ref_stats
        assert same_bits(estimate.gain, ref_gain)
        assert np.array_equal(estimate.reliability, ref_rel)


def test_update_edge_cases_by_hand():
    # one pixel per case: (start gain, start rel, value) -> (gain, rel, changed, mismatch, negative)
    cases = [
        (999.9, -1, 0.0, 999.9, -1, 0, 0, 0),  # zeros are ignored
        (1.0, 7, -0.0, 1.0, 7, 0, 0, 0),  # so is -0.0
        (1.0, 7, -1.0, 1.0, -1, 0, 0, 1),  # negative -> -1, gain kept
        (999.9, -1, 1.1, 1.1, 0, 1, 0, 0),  # smaller positive resets even a -1 pixel
        (1.1, 3, 2.2, 1.1, 4, 0, 0, 0),  # multiple counts
        (1.1, -1, 2.2, 1.1, -1, 0, 0, 0),  # ... but does not restart a -1 pixel
        (1.0, 3, 1.5, 1.0, -1, 0, 1, 0),  # exact half: mismatch whatever the rounding
        (999.9, -1, 1000.0, 999.9, -1, 0, 1, 0),  # value >= 999.9 first: mismatch
        (999.9, -1, float(F32(999.9)), 999.9, -1, 0, 0, 0),  # equal to 999.9: matches, stays -1
        (1.0, 3, math.nan, 1.0, -1, 0, 1, 0),  # DIFFERENCE: NaN is a mismatch
        (1.0, 3, math.inf, 1.0, -1, 0, 1, 0),  # inf: (int) overflow -> mismatch (as RELION)
        (1.0, 32767, 1.0, 1.0, 32767, 0, 0, 0),  # DIFFERENCE: saturates
        (1.0, 32766, 3.0, 1.0, 32767, 0, 0, 0),
        (1e-30, 5, 1.0, 1e-30, -1, 0, 1, 0),  # quotient beyond int range -> INT_MIN -> mismatch
        (1.0, 2, 1.00009, 1.0, 3, 0, 0, 0),  # within the absolute tolerance 1e-4
        (1.0, 2, 1.0002, 1.0, -1, 0, 1, 0),
    ]
    for g0, r0, v, g1, r1, changed, mismatch, negative in cases:
        est = G.GainEstimate(np.array([[g0]], F32), np.array([[r0]], np.int16))
        stats = est.update(np.array([[v]], F32), 50)
        assert (float(est.gain[0, 0]), int(est.reliability[0, 0])) == (float(F32(g1)), r1), (g0, r0, v)
        assert (stats.changed, stats.mismatch, stats.negative) == (changed, mismatch, negative), (g0, r0, v)


def test_rounding_is_half_away_from_zero_and_int_cast_like_c():
    q = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, -0.49999997, 8388609.0, -0.0, 2.0**31, -(2.0**31),
                  np.nan, np.inf, -np.inf, 3.4e38], F32)
    expected = [c_int_round(float(x)) for x in q]
    got = G.relion_int_round(q)
    assert got.dtype == F32
    assert [int(x) for x in got] == expected
    assert not np.signbit(got).any() or all(int(x) < 0 for x in got[np.signbit(got)])  # no -0
    assert list(G.round_half_away_from_zero(np.array([2.5, -2.5, 0.5], F32))) == [3.0, -3.0, 1.0]
    assert list(np.round(np.array([2.5, 0.5]))) == [2.0, 0.0]  # why numpy's round cannot be used
    rng = np.random.default_rng(0)
    random = (rng.standard_normal(20000) * 10.0 ** rng.integers(-3, 12, 20000)).astype(F32)
    assert [int(x) for x in G.relion_int_round(random)] == [c_int_round(float(x)) for x in random]


def test_tolerance_comparison_in_float32_equals_relion_double_comparison():
    tol = G._float32_tolerance(1e-4)
    assert float(tol) <= 1e-4 < float(np.nextafter(tol, F32(1)))


def test_format_estimate_line():
    stats = G.FrameStats(changed=7673083, mismatch=0, negative=0, unreliable=14238980, total=14238980)
    line = G.format_estimate_line("Original/FoilHole_7230495_Data_7226082_7226083_20181209_0240-40759.mrc", 0, stats)
    assert line == (
        " Original/FoilHole_7230495_Data_7226082_7226083_20181209_0240-40759.mrc Frame 001 #Changed    7673083 "
        "#Mismatch          0, #Negative          0, #Unreliable   14238980 /   14238980"
    )
    assert G.format_estimate_line("m.mrc", 999, G.FrameStats(1, 2, 3, 4, 5)).startswith(" m.mrc Frame 1000 #Changed")
    assert G.format_unnormalise_line("m.mrc", 4, 40, 0) == " m.mrc Frame   5 /  40 #Error          0"


def test_messages():
    assert G.read_message(Path("Converted/gain_estimate.bin")) == "Read Converted/gain_estimate.bin"
    expected = "\nUpdated Converted/gain_estimate.bin and Converted/gain_estimate_reliablity.bin"
    assert G.updated_message("Converted") == expected
    assert G.updated_message("Converted/") == expected
    assert G.written_gain_reference_message("Out/") == (
        "Written Out/gain-reference.mrc. Please use this file as a gain reference when processing the converted movies."
    )
    assert G.different_size_message("a.mrc") == "The movie a.mrc has a different size from others."
    assert issubclass(GainError, CryotiffError) and issubclass(UnexpectedPixelValueError, CryotiffError)


# ---------------------------------------------------------------------------------------------
# Simulated movies
# ---------------------------------------------------------------------------------------------

SHAPE = (40, 56)


@pytest.fixture(scope="module")
def detector():
    return make_detector(SHAPE, np.random.default_rng(11), defect_fraction=0.004, cold_fraction=0.002)


@pytest.fixture(scope="module")
def movies(detector):
    rng = np.random.default_rng(12)
    return [detector.movie(40, rng).frames for _ in range(3)]


def estimate_over(*movies: np.ndarray, thresh: int = 10, start: G.GainEstimate | None = None,
                  track_merge: bool = False, shape=SHAPE) -> G.GainEstimate:
    est = start.copy() if start is not None else G.GainEstimate.new(shape)
    if track_merge:
        est.start_merge_tracking()
    for movie in movies:
        for frame in movie:
            est.update(frame, thresh)
    return est


def test_simulation_is_seeded_and_matches_its_truth():
    a = simulate_gain_normalised((20, 24), 5, seed=3, defect_fraction=0.01)
    b = simulate_gain_normalised((20, 24), 5, seed=3, defect_fraction=0.01)
    assert same_bits(a.frames, b.frames) and np.array_equal(a.counts, b.counts)
    det = a.detector
    assert a.frames.dtype == F32 and det.gain.dtype == F32 and a.counts.shape == a.frames.shape
    assert det.defect_mask.sum() == round(0.01 * 480) and not (det.defect_mask & det.cold_mask).any()
    normal = ~det.defect_mask
    assert same_bits((a.counts.astype(F32) * det.gain)[:, normal], a.frames[:, normal])
    # a defect pixel holds the mean of its neighbours' uncorrected values
    raw = a.counts.astype(np.float64) * det.gain
    for y, x in zip(*np.nonzero(det.defect_mask)):
        ys, xs = slice(max(y - 1, 0), y + 2), slice(max(x - 1, 0), x + 2)
        block = raw[:, ys, xs]
        mean = (block.sum(axis=(1, 2)) - raw[:, y, x]) / (block[0].size - 1)
        assert np.allclose(a.frames[:, y, x], mean, rtol=1e-6, atol=1e-6)
    big = make_detector((200, 200), np.random.default_rng(0))
    counts = big.movie(20, np.random.default_rng(1)).counts
    assert counts[:, big.cold_mask].mean() < 0.05 < 1.3 < counts[:, ~big.cold_mask].mean() < 1.6
    assert 0.95 < big.gain.mean() < 1.05 and 0.08 < big.gain.std() < 0.12


def test_estimated_gain_is_true_gain_at_reliable_pixels(detector, movies):
    est = estimate_over(*movies, thresh=10)
    reliable = est.reliable_mask(10)
    assert reliable.mean() > 0.95
    assert same_bits(est.gain[reliable], detector.gain[reliable])
    assert not reliable[detector.defect_mask].any()
    assert not reliable[detector.cold_mask].any()
    assert est.n_unreliable(10) == reliable.size - reliable.sum()


def test_executor_gives_identical_results(movies):
    serial = G.GainEstimate.new(SHAPE, track_merge=True)
    threaded = G.GainEstimate.new(SHAPE, track_merge=True)
    with ThreadPoolExecutor(3) as pool:
        for frame in movies[0]:
            s1 = serial.update(frame, 10)
            s2 = threaded.update(frame, 10, executor=pool, block_rows=7)
            assert s1 == s2
    for name in ("gain", "reliability", "n_observations", "common_divisor"):
        assert same_bits(getattr(serial, name), getattr(threaded, name)), name


def test_update_rejects_wrong_frame_size():
    with pytest.raises(GainError, match="does not match"):
        G.GainEstimate.new((4, 5)).update(np.zeros((5, 4), F32))


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def test_save_load_round_trip_and_relion_file_names(tmp_path, movies):
    est = estimate_over(movies[0])
    gain_path, rel_path = est.save(tmp_path)
    assert gain_path == tmp_path / "gain_estimate.bin"
    assert rel_path == tmp_path / "gain_estimate_reliablity.bin"  # RELION's spelling
    with mrcfile.open(gain_path) as mrc:
        assert (int(mrc.header.mode), int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz)) == (2, 56, 40, 1)
        assert float(mrc.voxel_size.x) == 1.0
    with mrcfile.open(rel_path) as mrc:
        assert (int(mrc.header.mode), int(mrc.header.nz)) == (1, 1)
    loaded = G.GainEstimate.load(gain_path, shape_yx=SHAPE)
    assert same_bits(loaded.gain, est.gain) and same_bits(loaded.reliability, est.reliability)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gain_estimate.bin", "gain_estimate_reliablity.bin"]

    # the documented spelling is accepted too, and any extension is read as MRC
    other = tmp_path / "other"
    other.mkdir()
    os.replace(gain_path, other / "my.gain.dat")
    os.replace(rel_path, other / "my.gain_reliability.dat")
    assert G.find_reliability_path(other / "my.gain.dat") == other / "my.gain_reliability.dat"
    loaded = G.GainEstimate.load(other / "my.gain.dat")
    assert same_bits(loaded.reliability, est.reliability)
    assert G.reliability_path_candidates("dir.v2/gain") == (Path("dir.v2/gain_reliablity"), Path("dir.v2/gain_reliability"))


def test_resume_equals_one_run(tmp_path, movies):
    first = estimate_over(movies[0])
    first.save(tmp_path)
    resumed = estimate_over(movies[1], start=G.GainEstimate.load(tmp_path / G.GAIN_ESTIMATE_NAME))
    one_go = estimate_over(movies[0], movies[1])
    assert same_bits(resumed.gain, one_go.gain) and same_bits(resumed.reliability, one_go.reliability)


def test_load_errors_name_the_file(tmp_path, movies):
    est = estimate_over(movies[0])
    gain_path, rel_path = est.save(tmp_path)
    with pytest.raises(GainError, match=r"wrong size.*gain_estimate\.bin"):
        G.GainEstimate.load(gain_path, shape_yx=(40, 57))
    rel_path.unlink()
    with pytest.raises(GainError, match="gain_estimate_reliablity.bin"):
        G.GainEstimate.load(gain_path)
    with mrcfile.new(rel_path) as mrc:
        mrc.set_data(np.zeros((40, 55), np.int16))
    with pytest.raises(GainError, match=r"reliability map has a wrong size.*reliablity"):
        G.GainEstimate.load(gain_path)
    with mrcfile.new(rel_path, overwrite=True) as mrc:  # float counters are fine if whole
        mrc.set_data(est.reliability.astype(F32))
    assert same_bits(G.GainEstimate.load(gain_path).reliability, est.reliability)
    with mrcfile.new(rel_path, overwrite=True) as mrc:
        mrc.set_data(est.reliability.astype(F32) + F32(0.5))
    with pytest.raises(GainError, match="whole numbers"):
        G.GainEstimate.load(gain_path)
    with mrcfile.new(rel_path, overwrite=True) as mrc:
        mrc.set_data(est.reliability)
    zero_stamp = bytearray(gain_path.read_bytes())
    zero_stamp[212:216] = bytes(4)  # RELION reads a file without machine stamp; so does cryotiff
    gain_path.write_bytes(bytes(zero_stamp))
    assert same_bits(G.GainEstimate.load(gain_path).gain, est.gain)
    gain_path.write_bytes(b"not an MRC file" * 10)
    with pytest.raises(GainError, match=r"Cannot read the gain file .*gain_estimate\.bin"):
        G.GainEstimate.load(gain_path)
    with pytest.raises(GainError, match="does not exist"):
        G.GainEstimate.load(tmp_path / "missing.bin")
    with mrcfile.new(gain_path, overwrite=True) as mrc:
        mrc.set_data(np.zeros((2, 40, 56), F32))
    with pytest.raises(GainError, match="2 sections"):
        G.GainEstimate.load(gain_path)


@pytest.mark.parametrize("interrupt_at", [1, 2, 3])
def test_interrupted_save_leaves_a_safe_pair(tmp_path, movies, monkeypatch, interrupt_at):
    thresh = 10
    old = estimate_over(movies[0][:3], thresh=thresh)  # short, so that many gains change next
    old.save(tmp_path)
    new = estimate_over(movies[1], thresh=thresh, start=old)
    changed = new.gain != old.gain
    assert changed.any() and (new.reliability[changed] >= thresh).any()

    real_replace = os.replace
    calls = []

    def replace(src, dst, **directories):  # src_dir_fd, dst_dir_fd (io.atomic)
        calls.append(dst)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        real_replace(src, dst, **directories)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path)
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gain_estimate.bin", "gain_estimate_reliablity.bin"]
    disk = G.GainEstimate.load(tmp_path / G.GAIN_ESTIMATE_NAME)
    as_old = (disk.gain == old.gain) & (disk.reliability == old.reliability)
    as_new = (disk.gain == new.gain) & (disk.reliability == new.reliability)
    interim = changed & ((disk.gain == old.gain) | (disk.gain == new.gain)) & (disk.reliability <= 0)
    assert (as_old | as_new | interim).all()
    if interrupt_at == 1:
        assert as_old.all()
    # never reliable with a gain that is not the final one
    reliable = disk.reliable_mask(thresh)
    assert same_bits(disk.gain[reliable & changed], new.gain[reliable & changed]) or not (reliable & changed).any()
    # and a normal save afterwards completes the pair
    new.save(tmp_path)
    disk = G.GainEstimate.load(tmp_path / G.GAIN_ESTIMATE_NAME)
    assert same_bits(disk.gain, new.gain) and same_bits(disk.reliability, new.reliability)


def test_first_save_interrupted_leaves_nothing_loadable(tmp_path, monkeypatch):
    est = G.GainEstimate.new((3, 4))
    real_replace = os.replace
    calls = []

    def replace(src, dst, **directories):  # src_dir_fd, dst_dir_fd (io.atomic)
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst, **directories)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        est.save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["gain_estimate_reliablity.bin"]
    with pytest.raises(GainError, match="gain_estimate.bin"):
        G.GainEstimate.load(tmp_path / G.GAIN_ESTIMATE_NAME)


def test_write_float_mrc(tmp_path):
    data = np.array([[1.5, -0.0], [np.nan, 3.25]], F32)
    path = G.write_float_mrc(tmp_path / "gain-reference.mrc", data, pixel_size_angstrom=1.05)
    with mrcfile.open(path) as mrc:
        assert int(mrc.header.mode) == 2 and int(mrc.header.nz) == 1
        assert math.isclose(float(mrc.voxel_size.x), 1.05, rel_tol=1e-6)
        assert same_bits(np.asarray(mrc.data), data)
    G.write_float_mrc(path, np.ones((2, 2), np.float64))
    with mrcfile.open(path) as mrc:
        assert float(mrc.voxel_size.x) == 1.0 and mrc.data.dtype == F32
    assert [p.name for p in tmp_path.iterdir()] == ["gain-reference.mrc"]


# ---------------------------------------------------------------------------------------------
# Integerisation
# ---------------------------------------------------------------------------------------------


def test_tiff_values_times_gain_reference_give_the_input_back_exactly(detector, movies):
    thresh = 10
    est = estimate_over(movies[0], movies[1], thresh=thresh)
    gain_ref = G.gain_reference(est, thresh)
    reliable = est.reliable_mask(thresh)
    assert same_bits(gain_ref[reliable], est.gain[reliable]) and (gain_ref[~reliable] == 1.0).all()
    for k, frame in enumerate(movies[2]):
        result = G.integerise(frame, gain_ref, reliable, movie="m.mrc", frame_index_0based=k)
        assert result.n_errors == 0 and result.n_inexact == 0 and result.values.dtype == F32
        assert same_bits(G.reconstruct(result.values, gain_ref), frame)  # every pixel, bit for bit
        ok, lo, hi = G.integer_range(result.values[reliable])
        assert ok and lo >= 0


def test_reconstruction_is_exact_only_within_relion_tolerance():
    g = F32(1.1)
    v = np.nextafter(F32(3) * g, F32(np.inf))  # one ulp above 3 g: RELION accepts it
    result = G.integerise(np.array([[v]], F32), np.array([[g]], F32), np.array([[True]]))
    assert result.values[0, 0] == 3 and result.n_errors == 0 and result.n_inexact == 1
    assert G.reconstruct(result.values, np.array([[g]], F32))[0, 0] != v
    with pytest.raises(UnexpectedPixelValueError):
        G.integerise(np.array([[v]], F32), np.array([[g]], F32), np.array([[True]]), tolerance_abs=0.0)


def test_mismatch_error_and_message():
    frame = np.array([[1.0, 2.0, 3.0], [0.0, 4.0, 1.5]], F32)
    gain = np.ones((2, 3), F32)
    rel = np.array([[50, 50, 50], [50, 50, 60]], np.int16)
    reliable = rel >= 50
    with pytest.raises(UnexpectedPixelValueError, match="Unexpected pixel value in a pixel that was considered reliable") as info:
        G.integerise(frame, gain, reliable, movie="Movies/a.mrc", frame_index_0based=2, reliability=rel)
    line = " mismatch: Movies/a.mrc frame  3 pos    1    2 obs   1.5000 status 60 expected   2.0000 gain 1.0000"
    assert info.value.mismatch_line == line
    assert "Movies/a.mrc frame 3 pixel (row 1, column 2)" in str(info.value)
    assert G.format_mismatch_line("m", 0, 0, 1, -0.25, -1, float("nan"), 0.5) == (
        " mismatch: m frame  1 pos    0    1 obs  -0.2500 status -1 expected      nan gain 0.5000"
    )
    long = G.format_mismatch_line("x" * 300, 0, 0, 0, 1.0, 1, 1.0, 1.0)
    assert len(long) == 255 and long.startswith(" mismatch: xxx")


def test_ignore_error_rounds_and_counts():
    frame = np.array([[1.5, 2.2, np.nan], [2.5 * 2.0**-14, -3.3, 7.7]], F32)
    gain = np.array([[1.0, 1.1, 1.0], [2.0**-14, 1.1, 1.0]], F32)
    reliable = np.array([[True, True, True], [True, True, False]])
    result = G.integerise(frame, gain, reliable, ignore_error=True, movie="a.mrc")
    # 1.5 -> 2 (error); 2.2/1.1 -> 2; NaN copied (error); exact half within tolerance -> 3 (away
    # from zero, no error); -3.3/1.1 -> -3; unreliable 7.7 copied
    assert same_bits(result.values, np.array([[2.0, 2.0, np.nan], [3.0, -3.0, 7.7]], F32))
    assert result.n_errors == 2
    assert [(int(r), int(c)) for r, c in zip(result.error_rows, result.error_columns)] == [(0, 0), (0, 2)]
    lines = list(result.mismatch_lines())
    assert lines[0] == " mismatch: a.mrc frame  1 pos    0    0 obs   1.5000 status 1 expected   2.0000 gain 1.0000"
    assert "obs      nan" in lines[1] and len(list(result.mismatch_lines(limit=1))) == 1
    zero = G.integerise(np.array([[-0.0]], F32), np.array([[1.0]], F32), np.array([[True]]))
    assert not np.signbit(zero.values[0, 0])  # RELION's int gives +0


def test_integerise_shape_check():
    with pytest.raises(GainError):
        G.integerise(np.zeros((2, 2), F32), np.ones((2, 3), F32), np.ones((2, 2), bool))


# ---------------------------------------------------------------------------------------------
# Lossy
# ---------------------------------------------------------------------------------------------


def test_lossy_changes_only_unreliable_pixels(detector, movies):
    thresh = 10
    est = estimate_over(movies[0], movies[1], thresh=thresh)
    gain_ref = G.gain_reference(est, thresh)
    reliable = est.reliable_mask(thresh)
    assert (~reliable).sum() >= detector.defect_mask.sum() > 0
    for frame in movies[2][:10]:
        result = G.lossy_integerise(frame, gain_ref, reliable)
        assert result.counts.dtype == np.int32
        back = G.reconstruct(result.counts, gain_ref)
        assert same_bits(back[reliable], frame[reliable])  # reliable pixels never change
        raw = frame[~reliable].astype(np.float64)
        change = np.abs(result.counts[~reliable] - raw)
        assert change.max() <= 0.5
        s = result.stats
        assert s.n_pixels == (~reliable).sum()
        assert s.n_changed == np.count_nonzero(change) > 0  # defects are not whole numbers
        assert s.max_abs_change == change.max() and math.isclose(s.sum_abs_change, change.sum())


def test_lossy_edge_values():
    frame = np.array([[-2.5, 2.5, 0.49999997, np.nan, 3.0e9, 4.0]], F32)
    gain = np.ones((1, 6), F32)
    reliable = np.array([[False, False, False, False, False, True]])
    result = G.lossy_integerise(frame, gain, reliable)
    assert list(result.counts[0]) == [-3, 3, 0, 0, 2**31 - 1, 4]  # negatives keep their sign
    s = result.stats
    assert (s.n_pixels, s.n_nonfinite, s.n_clipped, s.n_changed) == (5, 1, 1, 5)
    with pytest.raises(UnexpectedPixelValueError):
        G.lossy_integerise(np.array([[1.5]], F32), np.ones((1, 1), F32), np.array([[True]]))
    # reliable errors kept with ignore_error: NaN -> 0, beyond int32 -> saturated, 1.5 -> 2
    kept = G.lossy_integerise(np.array([[np.nan, 3.0e9, 1.5]], F32), np.ones((1, 3), F32),
                              np.ones((1, 3), bool), ignore_error=True)
    assert list(kept.counts[0]) == [0, 2**31 - 128, 2] and kept.integer.n_errors == 3


# ---------------------------------------------------------------------------------------------
# Integer-valued frames
# ---------------------------------------------------------------------------------------------


def test_integer_range_and_smallest_dtype():
    assert G.integer_range(np.array([[0, 3], [255, 7]], F32)) == (True, 0, 255)
    assert G.integer_range(np.array([[-1.0, 2.0]], F32)) == (True, -1, 2)
    assert G.integer_range(np.array([[0.5, 2.0]], F32))[0] is False
    assert G.integer_range(np.array([[np.nan, 2.0]], F32))[0] is False
    assert G.integer_range(np.array([[np.inf, 2.0]], F32))[0] is False
    assert G.integer_range(np.array([[-0.0, 2.0]], F32))[0] is False
    assert G.integer_range(np.array([[-0.0, 2.0]], F32), keep_negative_zero=False) == (True, 0, 2)
    assert G.integer_range(np.array([[1, 2]], np.uint16)) == (True, 1, 2)
    assert G.smallest_integer_dtype(0, 255) == np.uint8
    assert G.smallest_integer_dtype(-1, 127) == np.int8
    assert G.smallest_integer_dtype(0, 256) == np.uint16
    assert G.smallest_integer_dtype(-1, 128) == np.int16
    assert G.smallest_integer_dtype(0, 70000) is None
    assert G.smallest_integer_dtype(0, 3, shape_yx=(7420, 3838)) == np.uint16  # IMOD 4-bit size
    assert G.smallest_integer_dtype(0, 3, shape_yx=(3710, 3838)) == np.uint8  # K2


# ---------------------------------------------------------------------------------------------
# Merge
# ---------------------------------------------------------------------------------------------


def pixel_run(values, start=None):
    """A 1x1 estimate with merge tracking after the values (one frame each)."""
    est = start.copy() if start is not None else G.GainEstimate.new((1, 1))
    est.start_merge_tracking()
    for v in values:
        est.update(np.array([[v]], F32), 50)
    return est


def serial_pixel(*sequences):
    return pixel_run([v for seq in sequences for v in seq])


@pytest.mark.parametrize(
    "a_values, b_values, expected_rel",
    [
        ([1.0, 1.0], [1.5, 1.5, 3.0], -1),  # larger gain, not a multiple: serial A,B marks mismatch
        ([1.0, 1.0], [2.0, 4.0], 3),  # larger gain, a multiple: counts add up (1 + 2)
        ([1.0, 1.7, 1.0], [2.0], -1),  # winner already -1: stays -1
        ([1.0, 1.0, 1.0], [0.0, 0.0], 2),  # partner saw nothing: 999.9 start is no obstacle
        ([1000.0], [0.0], -1),  # nobody saw anything below 999.9
        ([1.0, np.nan], [1.0], -1),  # NaN is a mismatch
        ([2.0, 1.0, 3.0], [1.0, 2.0], 3),  # equal gains: min of A,B (2+1) and B,A (1+3)
        ([3.0, 2.0, 1.0], [3.0, 1.0, 1.0], 3),  # equal gains: A,B gives 0+3, B,A gives 1+3
        ([2.0, 3.0, 1.0], [1.0, 1.0], 2),  # equal gains, A saw a non-multiple of 2 first: 0+2 vs 1+3
        ([-1.0, 1.0, 1.0], [1.0], -1),  # a negative before the change: B,A gives -1, A,B gives 2
    ],
)
def test_merge_by_hand(a_values, b_values, expected_rel):
    a, b = pixel_run(a_values), pixel_run(b_values)
    ab, ba = serial_pixel(a_values, b_values), serial_pixel(b_values, a_values)
    for merged in (G.merge(a, b), G.merge(b, a)):
        assert same_bits(merged.gain, ab.gain) and same_bits(merged.gain, ba.gain)
        assert int(merged.reliability[0, 0]) == expected_rel
        assert int(merged.reliability[0, 0]) in (int(ab.reliability[0, 0]), int(ba.reliability[0, 0]))
        assert np.array_equal(merged.n_observations, ab.n_observations)


def test_merge_by_hand_from_a_resumed_state():
    start = pixel_run([1.0, 1.0, 1.0])  # gain 1.0, counter 2
    start = G.GainEstimate(start.gain, start.reliability)
    a, b = pixel_run([2.0, 0.0], start), pixel_run([3.0], start)
    merged = G.merge(a, b)
    assert float(merged.gain[0, 0]) == 1.0 and int(merged.reliability[0, 0]) == 4


@pytest.mark.parametrize("mean", [0.3, 1.45, 4.0])
def test_merge_equals_a_serial_run_on_simulated_movies(detector, mean):
    rng = np.random.default_rng(int(mean * 10))
    a_movie, b_movie = (detector.movie(25, rng, mean).frames for _ in range(2))
    for start in (None, estimate_over(detector.movie(5, rng, mean).frames)):
        ab = estimate_over(a_movie, b_movie, start=start)
        ba = estimate_over(b_movie, a_movie, start=start)
        merged = G.merge(estimate_over(a_movie, start=start, track_merge=True),
                         estimate_over(b_movie, start=start, track_merge=True))
        assert same_bits(merged.gain, ab.gain) and same_bits(merged.gain, ba.gain)
        rel = merged.reliability
        assert ((rel == ab.reliability) | (rel == ba.reliability)).all()
        agree = ab.reliability == ba.reliability
        assert np.array_equal(rel[agree], ab.reliability[agree])
        assert (~agree).any() and agree.mean() > 0.05  # both situations are exercised
        # where A's gain is strictly smaller, the result is the serial run A then B
        a_wins = estimate_over(a_movie, start=start).gain < estimate_over(b_movie, start=start).gain
        assert np.array_equal(rel[a_wins], ab.reliability[a_wins])
        assert np.array_equal(merged.n_observations, estimate_over(a_movie, b_movie, start=start, track_merge=True).n_observations)


def test_merge_of_three_equals_one_of_the_serial_orders(detector):
    rng = np.random.default_rng(7)
    parts = [detector.movie(12, rng).frames for _ in range(3)]
    merged = G.merge_all([estimate_over(p, track_merge=True) for p in parts])
    serial = [estimate_over(*(parts[i] for i in order)) for order in itertools.permutations(range(3))]
    assert all(same_bits(merged.gain, s.gain) for s in serial)
    assert np.any([merged.reliability == s.reliability for s in serial], axis=0).all()


def test_merge_needs_tracking_and_equal_sizes():
    with pytest.raises(ValueError, match="track_merge"):
        G.merge(G.GainEstimate.new((2, 2)), G.GainEstimate.new((2, 2), track_merge=True))
    with pytest.raises(GainError):
        G.merge(G.GainEstimate.new((2, 2), track_merge=True), G.GainEstimate.new((2, 3), track_merge=True))


class _SlowDisk:
    """``os.fsync`` on the save's fsync threads (``cryotiff-fsync``) made slow, with what a test
    needs to know about them: which ran, which are running, and which found their file closed
    (or its descriptor reused) under them, the bug the tests below look for."""

    def __init__(self, monkeypatch, hold):
        import cryotiff.gain.files as files

        self.real_fsync = os.fsync
        self.hold = hold  # hold(number of this fsync, 1-based): blocks as a slow disk would
        self.lock = threading.Lock()
        self.started = 0
        self.running: list[int] = []
        self.closed_under_fsync: list[str] = []
        monkeypatch.setattr(files.os, "fsync", self.fsync)

    def fsync(self, fd):
        if threading.current_thread().name != "cryotiff-fsync":
            return self.real_fsync(fd)
        with self.lock:
            self.started += 1
            number = self.started
            self.running.append(fd)
        file_before = os.fstat(fd)
        try:
            self.hold(number)
            try:  # the file is still open, still this one: EBADF or another inode is the bug
                file_after = os.fstat(fd)
            except OSError as exc:
                self.closed_under_fsync.append(f"fsync {number}: {exc}")
                raise
            if (file_after.st_dev, file_after.st_ino) != (file_before.st_dev, file_before.st_ino):
                self.closed_under_fsync.append(f"fsync {number}: its descriptor now names another file")
            return self.real_fsync(fd)
        finally:
            with self.lock:
                self.running.remove(fd)


@pytest.mark.parametrize("signalled_thread", ["main", "another"])
def test_ctrl_c_while_a_save_waits_for_its_fsync_waits_for_it_then_removes_the_temporaries(
    tmp_path, monkeypatch, signalled_thread
):
    """Ctrl-C while the save waits for the fsync of its temporary files (a slow disk): the save
    used to go on at once (Python 3.11's interrupted join() takes the thread for ended) and
    remove and close the temporary files while their fsync still ran. It must wait for the
    fsync, then remove them: no temporary is left, nothing was renamed, and no fsync outlives
    the save.

    The Ctrl-C must also be acted upon while the fsync still runs, wherever the signal lands: a
    Ctrl-C at the terminal may reach any thread of the process (``another``), and one that
    reaches the main thread just before its wait blocks (between Python's last look at its
    signals and the lock's system call, a window a loaded machine keeps open) interrupts nothing
    either: the save then waited for the whole fsync before it noticed the Ctrl-C.

    Deterministic: the first fsync is held until the interrupt has reached the main thread (it
    once had 5 s to arrive and did not, in a pytest that ignored SIGINT), then takes a little
    longer, the time a save that does not wait would need to close its file under it."""
    est = G.GainEstimate.new((3, 4))
    both_in_fsync = threading.Event()
    main_thread = threading.main_thread().ident

    with sigint_handler_that_says_so() as interrupted:

        def hold(number):
            if number == 2:  # both files written: the save waits for their fsync now
                both_in_fsync.set()
                return
            assert interrupted.wait(HANG_SECONDS), "the interrupt never reached the main thread"
            time.sleep(0.2)  # the disk still busy after the Ctrl-C

        disk = _SlowDisk(monkeypatch, hold)

        def main_thread_waits():
            frame = sys._current_frames().get(main_thread)
            return frame is not None and frame.f_code.co_name == "wait" and frame.f_code.co_filename == threading.__file__

        def ctrl_c_during_the_fsync():
            if both_in_fsync.wait(HANG_SECONDS):
                deadline = time.monotonic() + HANG_SECONDS
                while not main_thread_waits() and time.monotonic() < deadline:
                    time.sleep(0.001)  # the save waits for the fsync now (in threading's Condition.wait)
                signalled = main_thread if signalled_thread == "main" else threading.get_ident()
                signal.pthread_kill(signalled, signal.SIGINT)

        interrupter = threading.Thread(target=ctrl_c_during_the_fsync)
        interrupter.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                est.save(tmp_path)
            assert disk.running == []  # every fsync ended before the save did
        finally:
            both_in_fsync.set()  # the interrupter ends also if the save did not get that far
            interrupter.join()
    assert interrupted.is_set() and disk.started == 2
    assert disk.closed_under_fsync == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("interrupted_start", [1, 2])
def test_ctrl_c_while_an_fsync_thread_starts_leaves_no_fsync_on_a_closed_file(tmp_path, monkeypatch, interrupted_start):
    """Ctrl-C while the save starts the fsync thread of a temporary file (Thread.start() waits
    for the new thread to run, which takes a while on a loaded machine): the thread runs, but
    the save did not yet hold it, so it removed and closed the temporary files without waiting
    for that fsync, which then ran on a closed (or reused) descriptor. Now the thread is started
    before its file is written, and handed the file afterwards: an interrupted start has no
    file to fsync."""
    import cryotiff.gain.files as files

    est = G.GainEstimate.new((3, 4))
    fsync_threads: list[threading.Thread] = []
    real_thread = threading.Thread
    save_ended = threading.Event()

    def hold(number):
        if getattr(threading.current_thread(), "start_interrupted", False):
            # the save does not hold this thread: a file it has to fsync stays in fsync until the
            # save has removed the temporary files
            save_ended.wait(HANG_SECONDS)

    disk = _SlowDisk(monkeypatch, hold)

    class StartInterrupted(real_thread):
        def start(self):
            if self.name == "cryotiff-fsync":
                fsync_threads.append(self)
                self.start_interrupted = len(fsync_threads) == interrupted_start
            super().start()  # the thread runs; then the Ctrl-C lands in start()
            if getattr(self, "start_interrupted", False):
                raise KeyboardInterrupt

    monkeypatch.setattr(files.threading, "Thread", StartInterrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            est.save(tmp_path)
    finally:
        save_ended.set()
        monkeypatch.setattr(files.threading, "Thread", real_thread)
    for thread in fsync_threads:
        thread.join(HANG_SECONDS)
        assert not thread.is_alive()
    assert disk.closed_under_fsync == []
    assert list(tmp_path.iterdir()) == []
