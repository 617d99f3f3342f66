"""``--verify_only``: check finished outputs, page by page, before the originals are deleted, or
after, against the manifest.

* **With the originals** (``--i``): every page of each movie's TIFF is decoded and compared with
  the page the movie gives, made by the same page source a conversion uses
  (:func:`cryotiff.convert.open_page_source`) with the options recorded in the TIFF
  (:mod:`cryotiff.recorded_options`): MRC and TIFF frames as they are (the TIFF's rows flipped
  back), EER frames rendered again with the grouping, upsampling and ``--short`` that made the
  TIFF, float movies integerised again with the gain that made them. For a float movie converted
  with a gain, the TIFF's pages times the gain reference must also give back the float original,
  bit for bit, or within RELION's tolerance (1e-4) where the conversion accepted that.
* **Without the originals** (only ``--o``): every output the manifest of ``--o`` names
  (:mod:`cryotiff.manifest`) is decoded, and its pages' digests, its sample type, size and page
  count and the SHA-256 of the file are compared with what was recorded when it was written;
  for a float movie converted with a gain also ``<o>/gain-reference.mrc``, which its pages need,
  with the digest of the gain reference they were made with; for an EER movie converted with
  ``--gain`` the same file, the EER gain converted as RELION does, which its counts need.

With the originals, an EER output's ``<o>/gain-reference.mrc`` is checked against the digest
of its manifest line, or, without one, against the EER gain ``--gain`` converts to.

Pages are decoded by the TIFF reader that reads TIFF movies (:class:`cryotiff.io.tiff.TiffMovie`),
one per thread, ``--j`` pages at a time. This module never prints: each movie gives a
:class:`Verdict`, and the CLI prints them.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .convert import ConvertOptions, GainPages, PageSource, WiderTypeNeeded, open_page_source, ordered_map
from .errors import CryotiffError
from .jobs import Job, Reporter, damaged_frames_text, prepare
from .manifest import MANIFEST_NAME, PAGE_DIGEST_DIGITS, ManifestEntry, page_digest, pixels_digest

#: The options a TIFF's record can hold that change how its pages are made again.
RECORDED_OPTIONS = ("eer_grouping", "eer_upsampling", "short", "thresh", "lossy", "ignore_error")


@dataclass
class Verdict:
    """The check of one output.

    Attributes:
        output: the TIFF.
        source: the original it was compared with (None: against the manifest).
        status: ``ok``, ``differs`` (pixels, pages, type or file bytes), ``missing`` (no
            output) or ``unchecked`` (it could not be compared: the original or the gain it was
            made with cannot be read).
        message: what differs or why it could not be checked; for ``ok``, remarks.
        n_pages: pages decoded.
        output_bytes: bytes of the TIFF.
        seconds: time spent.
        exact: for ``ok``: the output gives back its original bit for bit; False where it is as
            it was made but approximates the original (``--lossy``, ``--ignore_error``, RELION's
            tolerance of the gain path), which ``message`` says.
    """

    output: Path
    source: Path | None
    status: str
    message: str = ""
    n_pages: int = 0
    output_bytes: int = 0
    seconds: float = 0.0
    exact: bool = True

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def line(self) -> str:
        """``OK       out/a.tif (40 pages; compared with a.mrc)`` or ``DIFFERS  out/a.tif: ...``."""
        against = f"compared with {self.source}" if self.source is not None else "compared with the manifest"
        if self.ok:
            return f"OK        {self.output} ({_pages_count(self.n_pages)}; {against})" + (
                f"; {self.message}" if self.message else "")
        label = {"differs": "DIFFERS", "missing": "MISSING", "unchecked": "UNCHECKED"}[self.status]
        return f"{label:<9} {self.output}: {self.message}"


def _pages_count(n_pages: int) -> str:
    """``1 page``, ``40 pages``."""
    return f"{n_pages} page" + "s" * (n_pages != 1)


@dataclass
class _PageCheck:
    index: int
    digest: bytes = b""
    difference: str = ""


class _TiffPages:
    """The pages of an output TIFF, decoded by one :class:`~cryotiff.io.tiff.TiffMovie` per
    thread (a TiffMovie serialises its reads; one each lets ``--j`` threads decode at once)."""

    def __init__(self, path: Path):
        from .io.tiff import open_tiff

        self.path = path
        self._open = open_tiff
        self._local = threading.local()
        self._movies = []
        self._lock = threading.Lock()
        first = self._movie()
        self.info = first.info

    def _movie(self):
        movie = getattr(self._local, "movie", None)
        if movie is None:
            movie = self._local.movie = self._open(self.path)
            with self._lock:
                self._movies.append(movie)
        return movie

    def page(self, index: int) -> np.ndarray:
        """Page ``index`` in raster order (the TIFF's rows flipped back)."""
        return self._movie().read_frame(index)

    def close(self) -> None:
        for movie in self._movies:
            movie.close()


def _linked_output(output: Path, source: Path | None) -> Verdict | None:
    """An output that is a symbolic link is never called exact: cryotiff never leaves one at an
    output's name (it replaces a link there), and the file it points to can change, or go with
    the originals, without the output's name showing it."""
    if not output.is_symlink():
        return None
    try:
        target = os.readlink(output)
    except OSError:
        target = "?"
    return Verdict(output, source, "unchecked", f"is a symbolic link to {target}, not the file written at "
                   "conversion; check the file it points to, or convert again")


def unlisted_outputs(output_dir: Path, entries: Sequence[ManifestEntry]) -> list[Verdict]:
    """The ``.tif`` files under ``output_dir`` that no entry names (RELION's outputs, outputs whose
    manifest line could not be written, lines removed): ``unchecked``, since without a line
    nothing says what they must contain. Directories are not followed through links; a file
    an entry reaches through a linked directory is matched by its real path."""
    named = {os.path.realpath(output_dir / entry.output) for entry in entries}
    manifest = output_dir / MANIFEST_NAME
    verdicts = []
    for directory, subdirectories, files in os.walk(output_dir):
        subdirectories.sort()
        for name in sorted(files):
            path = Path(directory) / name
            if name.endswith(".tif") and os.path.realpath(path) not in named:
                verdicts.append(Verdict(path, None, "unchecked", f"no readable line of {manifest} names it; check it "
                                        "against its original with --i"))
    return verdicts


def _first_difference(stored: np.ndarray, expected: np.ndarray) -> str:
    """``pixel x=12 y=3: 7 in the TIFF, 5 expected (2 pixels of the page differ)``; "" if equal.
    Compared bit for bit (a float's sign of zero and NaN payloads count)."""
    as_bits = np.dtype(f"u{stored.dtype.itemsize}")
    unequal = stored.view(as_bits) != expected.view(as_bits)
    if not unequal.any():
        return ""
    index = int(np.flatnonzero(unequal)[0])
    y, x = divmod(index, stored.shape[1])
    count = int(np.count_nonzero(unequal))
    return (f"pixel x={x} y={y}: {stored[y, x]!r} in the TIFF, {expected[y, x]!r} expected "
            f"({count} pixel{'s' * (count != 1)} of the page differ{'s' * (count == 1)})")


def _pages(check: Callable[[int], _PageCheck], n_pages: int, executor: Executor | None,
           threads: int) -> Iterator[_PageCheck]:
    return ordered_map(check, n_pages, executor, 2 * max(1, threads))


def recorded_options(options: ConvertOptions, record) -> ConvertOptions:
    """The run's options with those the TIFF's record says made it (EER grouping, upsampling,
    ``--short``; for float movies the gain, ``--thresh``, ``--lossy``, ``--ignore_error``)."""
    if record is None:
        return options
    made = record.made_with
    changes = {name: made[name] for name in RECORDED_OPTIONS if name in made}
    if "eer_grouping" in made:
        changes["eer_dose_per_fraction"] = None  # the grouping as used
    if "gain" in made:
        gain = made["gain"]
        changes["gain"] = Path(gain["file"]) if isinstance(gain, dict) and gain.get("file") else None
    return dataclasses.replace(options, **changes)


class GainContexts:
    """The gain state for each gain file that made some output (loaded once; files checked
    against the checksums the outputs recorded)."""

    def __init__(self) -> None:
        self._contexts: dict[tuple, object] = {}
        self._checksums: dict[Path, str] = {}
        self._reference_problems: dict[tuple[Path, int], str | None] = {}

    def reference_problem(self, output_dir: Path, reference: np.ndarray, eer: bool = False) -> str | None:
        """Why ``<o>/gain-reference.mrc`` is not ``reference`` bit for bit (missing, unreadable,
        another image), or None; each file read once per reference. ``eer``: the EER gain
        converted from ``--gain`` (the sentence says what the file is to EER movies)."""
        from .gain import GAIN_REFERENCE_NAME

        path = Path(output_dir) / GAIN_REFERENCE_NAME
        key = (path, id(reference))
        if key not in self._reference_problems:
            expected = np.ascontiguousarray(reference, np.float32)
            self._reference_problems[key] = _gain_reference_problem(
                path, lambda image: image.shape == expected.shape and np.array_equal(image.view(np.uint32),
                                                                                      expected.view(np.uint32)), eer)
        return self._reference_problems[key]

    def recorded_reference_problem(self, output_dir: Path, entry: ManifestEntry) -> tuple[str, str] | None:
        """For a manifest ``entry`` whose pages need the gain reference (a float movie's) or
        whose line names one (an EER movie's converted ``--gain``): ``("differs", why)`` when
        the file its line names is missing, unreadable or holds other pixels than its digest,
        ``("unchecked", why)`` when the line of a float movie's output (an earlier version's)
        names none; else None. Each file read once per digest."""
        from .manifest import gain_reference_digest

        recorded = entry.gain_reference
        if recorded is None and not entry.needs_gain_reference:
            return None  # an EER line without one: converted without --gain, or by an earlier version
        if recorded is None:
            from .gain import GAIN_REFERENCE_NAME

            return ("unchecked", f"its manifest line (written by an earlier cryotiff) does not say which "
                                 f"{Path(output_dir) / GAIN_REFERENCE_NAME} they need (TIFF x gain reference = the "
                                 "original); check it with --i against its original")
        path = Path(output_dir) / recorded["file"]
        key = (path, recorded["pixels_sha256"])
        if key not in self._reference_problems:
            self._reference_problems[key] = _gain_reference_problem(
                path, lambda image: gain_reference_digest(image) == recorded["pixels_sha256"],
                eer=not entry.needs_gain_reference)
        problem = self._reference_problems[key]
        return ("differs", problem) if problem is not None else None

    def for_movie(self, job: Job, options: ConvertOptions, record) -> object:
        """The :class:`~cryotiff.convert.RunContext` that makes ``job``'s pages as the record says.

        Raises:
            CryotiffError: the gain file is gone, changed since the conversion, or unreadable.
        """
        from .errors import GainError
        from .recorded_options import file_sha256

        gain = record.made_with.get("gain") if record is not None else None
        if isinstance(gain, dict) and gain.get("sha256") and options.gain is not None:
            path = options.gain
            try:
                checksum = self._checksums.setdefault(path, file_sha256(path))
            except OSError as exc:
                raise GainError(f"the gain {path} it was made with cannot be read ({exc.strerror or exc})") from None
            except CryotiffError as exc:  # missing, or no regular file (a named pipe is never read)
                raise GainError(f"the gain it was made with cannot be read ({exc})") from None
            if checksum != gain["sha256"]:
                raise GainError(f"the gain {path} has changed since the conversion (SHA-256 {checksum[:12]}..., "
                                f"recorded {str(gain['sha256'])[:12]}...)")
        key = (str(options.gain), options.thresh, options.eer_upsampling)
        if key not in self._contexts:
            self._contexts[key] = prepare([job], options, Reporter(), write_files=False)
        return self._contexts[key]


def _gain_reference_problem(path: Path, holds_it: Callable[[np.ndarray], bool], eer: bool = False) -> str | None:
    """Why ``path`` is not the gain reference the pages need (``holds_it`` of its float32 image
    is False), as the end of a sentence; None if it is. ``eer``: the EER gain written with EER
    movies' TIFFs (their counts need it; the pages give back their original without it)."""
    from .errors import GainError
    from .gain.files import read_mrc_image

    if eer:
        needed = f"{path}, the gain their counts need (the EER gain converted as RELION does),"
        other = "the one written with them"
    else:
        needed = f"{path}, which they need (TIFF x gain reference = the original),"
        other = "the one they were made with"
    if not os.path.lexists(path):
        return f"{needed} does not exist"
    try:
        existing = np.ascontiguousarray(read_mrc_image(path, "gain reference"), np.float32)
    except GainError as exc:
        return f"{needed} cannot be read ({exc})"
    if not holds_it(existing):
        return f"{needed} holds another gain reference than {other}"
    return None


def verify_with_original(job: Job, options: ConvertOptions, executor: Executor | None,
                         contexts: GainContexts, entry: ManifestEntry | None = None) -> Verdict:
    """Compare every page of ``job.destination`` with the page ``job.source`` gives (see the
    module docstring); with the manifest's ``entry`` also the file's SHA-256."""
    from .recorded_options import read_record

    started = time.perf_counter()
    output = job.destination
    linked = _linked_output(output, job.source)
    if linked is not None:
        return linked
    if not output.is_file():
        return Verdict(output, job.source, "missing", "no such file")
    record = read_record(output)
    movie_options = recorded_options(options, record)
    try:
        context = contexts.for_movie(job, movie_options, record)
        source = open_page_source(job.source, movie_options, context)
    except CryotiffError as exc:
        return Verdict(output, job.source, "unchecked", f"cannot make its pages again: {exc}")
    except OSError as exc:
        return Verdict(output, job.source, "unchecked", f"cannot read {job.source} ({exc.strerror or exc})")
    try:
        verdict = _compare(job, output, source, movie_options, executor, entry, started)
        problem = None
        if verdict.ok and isinstance(source, GainPages):
            problem = contexts.reference_problem(options.output_dir, source.gain_reference)
        elif verdict.ok and source.is_eer:
            problem = _eer_gain_reference_problem(options.output_dir, entry, context, contexts)
        if problem is not None:
            verdict = dataclasses.replace(verdict, status="differs",
                                          message=f"its pages are those of {job.source}, but {problem}")
        manifest = Path(options.output_dir) / MANIFEST_NAME
        if verdict.ok and entry is None and os.path.lexists(manifest):
            # Right, but the check after the originals are deleted will not be able to say so
            # (a run killed between the rename and the line, a line a full disk refused).
            again = ("--only_do_unfinished converts it again, which writes its line" if record is not None
                     else "converting it again with cryotiff writes its line")  # RELION's: kept by --only_do_unfinished
            unlisted = (f"no line of {manifest} names it: once {job.source} is gone, --verify_only --o cannot check "
                        f"it ({again})")
            verdict = dataclasses.replace(verdict, message="; ".join(filter(None, (verdict.message, unlisted))))
        return verdict
    finally:
        source.close()


def _eer_gain_reference_problem(output_dir: Path, entry: ManifestEntry | None, context,
                                contexts: GainContexts) -> str | None:
    """Why ``<o>/gain-reference.mrc`` is not the EER gain written with an EER output: checked
    against the digest of the output's manifest line, or, without one (a manifest removed, a
    line of an earlier version), against the gain ``--gain`` converts to now; None when it is,
    or when neither says that there is one (a conversion without ``--gain``)."""
    if entry is not None and entry.gain_reference is not None:
        found = contexts.recorded_reference_problem(output_dir, entry)
        return found[1] if found is not None else None
    reference = getattr(context, "eer_gain_reference", None)
    return contexts.reference_problem(output_dir, reference, eer=True) if reference is not None else None


def _compare(job: Job, output: Path, source: PageSource, options: ConvertOptions, executor: Executor | None,
             entry: ManifestEntry | None, started: float) -> Verdict:
    try:
        stored = _TiffPages(output)
    except CryotiffError as exc:
        return Verdict(output, job.source, "differs", f"cannot be read ({exc})")
    try:
        info = stored.info
        shape, dtype = tuple(info.shape_yx), np.dtype(info.dtype)
        if shape != tuple(source.shape_yx) or info.n_frames != source.n_pages:
            return Verdict(output, job.source, "differs",
                           f"{_pages_count(info.n_frames)} of {shape[1]} x {shape[0]}; {job.source} gives "
                           f"{_pages_count(source.n_pages)} of {source.shape_yx[1]} x {source.shape_yx[0]}")
        if dtype != np.dtype(source.dtype):
            if not hasattr(source, "retype"):
                return Verdict(output, job.source, "differs",
                               f"its sample type is {dtype}; {job.source} gives {np.dtype(source.dtype)}")
            source.retype(dtype)  # a movie written again wider, as the conversion would have
        product_check = isinstance(source, GainPages) and not options.lossy and not options.ignore_error
        n_inexact = [0]

        def check(index: int) -> _PageCheck:
            try:
                page = stored.page(index)
            except CryotiffError as exc:
                return _PageCheck(index, difference=f"page {index + 1} cannot be decoded ({exc})")
            result = _PageCheck(index, digest=page_digest(page))
            try:
                expected = source.page(index)
            except WiderTypeNeeded as exc:
                result.difference = f"page {index + 1}: {exc.reason}, which a {dtype} TIFF cannot hold"
                return result
            difference = _first_difference(page, expected)
            if not difference and product_check:
                difference = _gain_product_difference(page, source, index, n_inexact)
            if difference:
                result.difference = f"page {index + 1}, {difference}"
            return result

        for page_check in _pages(check, source.n_pages, executor, options.threads):
            if page_check.difference:
                return Verdict(output, job.source, "differs", page_check.difference, page_check.index + 1,
                               output.stat().st_size, time.perf_counter() - started)
        notes = []
        left_out = sorted(getattr(source, "corrupt_frames", ()))  # EER: damaged raw frames left out, as at conversion
        if left_out:
            count, numbers = damaged_frames_text([index + 1 for index in left_out])
            if not options.ignore_error:
                return Verdict(output, job.source, "differs",
                               f"its pages are {job.source} rendered as at conversion, but they leave out {count} of "
                               f"it ({numbers}), whose electrons the TIFF lacks (--ignore_error accepts that)",
                               source.n_pages, output.stat().st_size, time.perf_counter() - started)
            notes.append(f"{count} ({numbers}) left out, as --ignore_error accepts")
        for option, accepted in (("lossy", options.lossy), ("ignore_error", options.ignore_error)):
            if accepted and isinstance(source, GainPages):
                notes.append(f"made with --{option}: TIFF x gain reference gives back the original only "
                             f"approximately, as --{option} accepted")
        if source.is_eer:  # what the pages hold: an EER movie rendered otherwise would give other pages
            from .recorded_options import describe_option

            notes.append("rendered with " + ", ".join(describe_option(name, value)
                                                      for name, value in source.pixel_options().items()))
        if n_inexact[0]:
            notes.append(f"{n_inexact[0]} values times the gain reference are within RELION's 1e-4 of the "
                         "original, not equal (as the conversion accepted)")
        if entry is not None:
            from .recorded_options import file_sha256

            if file_sha256(output) != entry.output_sha256:
                # Right now, but the check that follows the deletion of the originals would fail:
                # say so while they are still there.
                return Verdict(output, job.source, "differs",
                               f"its pages are those of {job.source}, but the last line for it in "
                               f"{Path(options.output_dir) / MANIFEST_NAME} describes another file (written by an "
                               f"earlier conversion), so --verify_only could not check it once {job.source} is gone; "
                               f"convert it again (--only_do_unfinished does) before deleting {job.source}",
                               source.n_pages, output.stat().st_size, time.perf_counter() - started)
        exact = not (left_out or n_inexact[0] or (isinstance(source, GainPages) and (options.lossy or
                                                                                    options.ignore_error)))
        return Verdict(output, job.source, "ok", "; ".join(notes), source.n_pages, output.stat().st_size,
                       time.perf_counter() - started, exact)
    finally:
        stored.close()


def _gain_product_difference(page: np.ndarray, source: GainPages, index: int, n_inexact: list[int]) -> str:
    """TIFF page x gain reference against the float original (reliable pixels within RELION's
    tolerance, which the conversion applied, everything else bit for bit); "" if it holds."""
    from .gain.estimate import RELION_TOLERANCE_ABS, _float32_tolerance

    original = source.movie.read_frame(index).astype(np.float32, copy=False)
    product = page.astype(np.float32) * source.gain_reference
    exact = product.view(np.uint32) == original.view(np.uint32)
    if exact.all():
        return ""
    close = np.abs(product - original) <= _float32_tolerance(RELION_TOLERANCE_ABS)
    accepted = ~exact & close & source.reliable_mask
    if (exact | accepted).all():
        n_inexact[0] += int(np.count_nonzero(accepted))
        return ""
    y, x = divmod(int(np.flatnonzero(~(exact | accepted))[0]), page.shape[1])
    return (f"pixel x={x} y={y}: the TIFF's {page[y, x]!r} times the gain reference {source.gain_reference[y, x]!r} "
            f"is {product[y, x]!r}, the original is {original[y, x]!r}")


def verify_with_manifest(output_dir: Path, entry: ManifestEntry, executor: Executor | None,
                         threads: int, contexts: GainContexts | None = None, ignore_error: bool = False) -> Verdict:
    """Compare the output ``entry`` names with it: the file's SHA-256, its pages, size and
    sample type, and every page's digest; for the pages of a gain-normalised movie also the
    gain reference they need (:meth:`GainContexts.recorded_reference_problem`). The damaged raw
    EER frames its line says were left out make it differ, as with the originals, unless
    ``ignore_error`` (``--ignore_error``) accepts them."""
    from .recorded_options import file_sha256

    started = time.perf_counter()
    output = output_dir / entry.output
    linked = _linked_output(output, None)
    if linked is not None:
        return linked
    if not output.is_file():
        return Verdict(output, None, "missing", f"no such file (the manifest records it, from {entry.source})")
    file_digest = executor.submit(file_sha256, output) if executor is not None else None
    try:
        stored = _TiffPages(output)
    except CryotiffError as exc:
        return Verdict(output, None, "differs", f"cannot be read ({exc})")
    try:
        info = stored.info
        if (info.n_frames, tuple(info.shape_yx), str(np.dtype(info.dtype))) != (
                entry.pages, tuple(entry.shape_yx), entry.sample_type):
            return Verdict(output, None, "differs",
                           f"{_pages_count(info.n_frames)} of {info.shape_yx[1]} x {info.shape_yx[0]} "
                           f"{np.dtype(info.dtype)}; the manifest records {_pages_count(entry.pages)} of {entry.shape_yx[1]} x {entry.shape_yx[0]} "
                           f"{entry.sample_type}")

        def check(index: int) -> _PageCheck:
            try:
                page = stored.page(index)
            except CryotiffError as exc:
                return _PageCheck(index, difference=f"page {index + 1} cannot be decoded ({exc})")
            digest = page_digest(page)
            result = _PageCheck(index, digest=digest)
            if digest.hex()[:PAGE_DIGEST_DIGITS] != entry.page_sha256[index]:
                result.difference = f"page {index + 1} decodes to other pixels than when it was written"
            return result

        digests = []
        for page_check in _pages(check, entry.pages, executor, threads):
            if page_check.difference:
                return Verdict(output, None, "differs", page_check.difference, page_check.index + 1,
                               output.stat().st_size, time.perf_counter() - started)
            digests.append(page_check.digest)
        if pixels_digest(digests) != entry.pixels_sha256:
            return Verdict(output, None, "differs", "its pixels differ from those written (pixels_sha256)",
                           entry.pages, output.stat().st_size, time.perf_counter() - started)
        digest = file_digest.result() if file_digest is not None else file_sha256(output)
        if digest != entry.output_sha256:
            return Verdict(output, None, "differs", "its pixels are as written, but its bytes differ from those "
                           "written (SHA-256 of the file)", entry.pages, output.stat().st_size,
                           time.perf_counter() - started)
        reference = (contexts or GainContexts()).recorded_reference_problem(output_dir, entry)
        if reference is not None:
            status, problem = reference
            return Verdict(output, None, status, f"its pixels are as written, but {problem}", entry.pages,
                           output.stat().st_size, time.perf_counter() - started)
        if entry.left_out_raw_frames:
            count, numbers = damaged_frames_text(entry.left_out_raw_frames)
            if not ignore_error:
                return Verdict(output, None, "differs", f"its pixels are as written, but they leave out {count} of "
                               f"{entry.source} ({numbers}), whose electrons the TIFF lacks (--ignore_error accepts "
                               "that)", entry.pages, output.stat().st_size, time.perf_counter() - started)
            return Verdict(output, None, "ok", f"{count} ({numbers}) left out, as --ignore_error accepts", entry.pages,
                           output.stat().st_size, time.perf_counter() - started, exact=False)
        return Verdict(output, None, "ok", "", entry.pages, output.stat().st_size, time.perf_counter() - started)
    finally:
        stored.close()


@dataclass
class VerifySummary:
    """Totals of a verification."""

    ok: int = 0
    differs: int = 0
    missing: int = 0
    unchecked: int = 0
    inexact: int = 0  # ok, but approximating their originals (Verdict.exact)
    pages: int = 0
    output_bytes: int = 0
    wall_seconds: float = 0.0

    @classmethod
    def of(cls, verdicts: Sequence[Verdict], wall_seconds: float) -> VerifySummary:
        summary = cls(wall_seconds=wall_seconds)
        for verdict in verdicts:
            setattr(summary, verdict.status, getattr(summary, verdict.status) + 1)
            summary.inexact += verdict.ok and not verdict.exact
            summary.pages += verdict.n_pages
            summary.output_bytes += verdict.output_bytes
        return summary

    @property
    def all_ok(self) -> bool:
        return self.differs == self.missing == self.unchecked == 0
