"""What the ``--i`` arguments name: movies, list and STAR files, directories searched
recursively and glob patterns, searched without leaving anything out unsaid (a directory that
cannot be searched, an argument that names nothing is an :class:`InputProblem`), and the name of
each movie's output (:func:`output_path`), which the search needs to leave the run's own outputs
out. :mod:`cryotiff.jobs` plans the jobs from what this module finds.
"""

from __future__ import annotations

import errno
import glob
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Iterable, Sequence

from .convert import MOVIE_SUFFIXES, MovieResult
from .errors import InputError, NamesNoMovieError
from .io import open_regular_stream
from .io.star import Table, movie_names, read_star_blocks

GLOB_CHARACTERS = set("*?[")


def read_list_file(path: Path) -> list[str]:
    """Movie names from a ``.lst`` file (UTF-8, with or without a byte order mark): one per
    line, whitespace trimmed, blank lines and ``#`` comments skipped (RELION keeps whitespace and
    crashes on a blank line).

    Raises:
        InputError: the file is missing or unreadable; :class:`NamesNoMovieError` when it names
            no movie.
    """
    try:
        with open_regular_stream(path, "a list file") as stream:  # a named pipe is refused, never read
            text = stream.read().decode("utf-8-sig", errors="replace")
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    names = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line)
    if not names:
        raise NamesNoMovieError(f"{path}: the list names no movie")
    return names


@dataclass(frozen=True)
class InputProblem:
    """Why an ``--i`` argument gives no movie, or not all of its movies.

    Attributes:
        path: the argument, or the directory or file inside it, concerned.
        message: one line naming it.
        names_nothing: the argument names no movie now (an empty directory, a pattern without
            matches, a list or STAR file without movies or not there): normal while ``--watch``
            waits for a collection. Otherwise something could not be read or searched.
        error: the error it is, raised alone (:func:`problem_error`).
    """

    path: Path
    message: str
    names_nothing: bool = False
    error: type[InputError] = InputError

    def as_result(self) -> MovieResult:
        """The problem as a failed result of the run (listed with the failed movies)."""
        return MovieResult(self.path, None, "failed", self.message)


def search_inputs(inputs: Sequence[str], output_dir: Path | None = None) -> tuple[list[Path], list[InputProblem]]:
    """The movies the ``--i`` arguments name, in order, without duplicates, and the problems
    met on the way (:func:`search_input`, one argument at a time)."""
    movies: list[Path] = []
    problems: list[InputProblem] = []
    for argument in inputs:
        found, met = search_input(argument, output_dir)
        movies.extend(found)
        problems.extend(met)
    return list(dict.fromkeys(movies)), problems


def search_input(argument: str, output_dir: Path | None = None) -> tuple[list[Path], list[InputProblem]]:
    """The movies one ``--i`` argument names, and the problems met.

    The argument may be a movie, a ``.star`` or ``.lst`` file, a directory (searched recursively
    for .mrc, .mrcs, .tif, .tiff, .eer and .ecc files, in sorted order; directory symlinks inside
    it are not followed) or a quoted glob pattern (``'Movies/*.eer'``; ``**`` recurses). What a
    directory or pattern finds leaves out the run's own outputs (:func:`_without_outputs`).

    One directory entry that a pattern reaches under several paths through directory symlinks
    (``**`` through a symlink loop) is one movie, kept under its first path. Every other name of
    a file (a hard link, a symlink beside the movie) is a name of its own, kept and converted
    under that name. Names given one by one are kept as given.

    Nothing is left out without a problem saying so: a directory that cannot be searched (its
    permissions, a file system gone stale or unmounted) is a problem, even when others beside it
    give movies, and so is an argument that names nothing (``names_nothing``).
    """
    path = Path(argument)
    problems: list[InputProblem] = []
    try:
        status = os.stat(path)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        status = None
    except OSError as exc:
        if not GLOB_CHARACTERS & set(argument):
            return [], [InputProblem(path, f"{path}: cannot be read ({exc.strerror or exc})")]
        status = None  # a pattern through a directory that cannot be searched: named below
    is_directory = status is not None and stat.S_ISDIR(status.st_mode)
    try:
        if path.suffix == ".star" and not is_directory:
            return [Path(name) for name in read_movie_names(path)], []
        if path.suffix == ".lst" and not is_directory:
            return [Path(name) for name in read_list_file(path)], []
    except InputError as exc:
        names_nothing = isinstance(exc, NamesNoMovieError) or not os.path.lexists(path)
        return [], [InputProblem(path, str(exc), names_nothing, type(exc))]
    if is_directory:
        found = _without_outputs(_one_name_per_file(sorted(_movies_in_directory(path, problems))), path, output_dir)
        if not found and not problems:
            problems.append(InputProblem(
                path, f"{path}: the directory holds no .mrc, .mrcs, .tif, .tiff, .eer or .ecc movie", True,
                NamesNoMovieError))
        return found, problems
    if GLOB_CHARACTERS & set(argument) and status is None:
        base = _pattern_base(argument)
        unsearchable = _unsearchable_directories(argument, base)
        problems.extend(unsearchable)
        blocked = [problem.path for problem in unsearchable]
        matches = [Path(p) for p in glob.glob(argument, recursive=True)]
        found = _without_outputs(_one_name_per_file(sorted(
            p for p in matches if not _is_below(p, blocked) and _is_regular(p, problems))), base, output_dir)
        if not found and not problems:
            problems.append(InputProblem(path, f"{argument}: no file matches this pattern", True, NamesNoMovieError))
        return found, problems
    return [path], []


#: The movie STAR files given with ``--i``, as their last reading here (the expansion of the
#: inputs) found them: ``{absolute path: blocks}`` (:func:`star_blocks_read`).
_STAR_FILES_READ: dict[str, dict[str, Table]] = {}


def read_movie_names(path: Path) -> list[str]:
    """:func:`cryotiff.io.star.read_movie_names` of the STAR file ``path``, which is read once:
    its tables are kept for :func:`star_blocks_read` (a reading that fails keeps the last one
    that did, as a ``--watch`` keeps the movies of its last complete read).

    Raises:
        StarFormatError: as :func:`cryotiff.io.star.read_movie_names`.
    """
    blocks = read_star_blocks(path)
    names = movie_names(blocks, path)
    _STAR_FILES_READ[os.path.abspath(path)] = blocks
    return names


def star_blocks_read(path: Path) -> dict[str, Table] | None:
    """The tables of the movie STAR file ``path`` as the last expansion of the inputs that
    named it read them (the version whose movies the run converts: movies.star takes their rows
    and optics groups from it, not from a newer version that replaced the file since); None
    where none read it. Each expansion reads the file anew.
    """
    return _STAR_FILES_READ.get(os.path.abspath(path))


def _unsearchable_directories(pattern: str, base: Path) -> list[InputProblem]:
    """The directories that matching ``pattern`` must enter but cannot (glob.glob says nothing of
    them): every directory its components lead to must be searchable (:func:`_search_error`),
    and listable where the next component holds a wildcard; for ``**``, so must every directory
    below (directory symlinks not followed). A directory inside one already named is not named
    again."""
    problems: list[InputProblem] = []

    def unreadable(error: OSError, directory: str) -> None:
        if error.errno == errno.ELOOP:  # ``**`` through a symlink loop, where the path gets too deep
            return
        if isinstance(error, (FileNotFoundError, NotADirectoryError)):
            return  # not there (yet), or removed while searched: nothing in it to miss
        # A directory on the pattern's literal path loses the whole pattern, one below it only its part.
        lost = "" if Path(directory) in (base, *base.parents) else "; the movies in it are not converted"
        problems.append(InputProblem(Path(directory), f"{pattern}: {directory} cannot be searched "
                                                      f"({error.strerror or error}){lost}"))

    parts = Path(pattern).parts
    for index, part in enumerate(parts):
        wildcard = bool(GLOB_CHARACTERS & set(part))
        if index == 0 and not wildcard:
            continue
        prefix = os.path.join(*parts[:index]) if index else "."
        listed = glob.glob(prefix, recursive=True) if GLOB_CHARACTERS & set(prefix) else [prefix]
        for directory in sorted(listed):
            error = _search_error(directory, listing=wildcard)
            if error is not None:
                unreadable(error, directory)
                continue
            if part == "**":
                for folder, folders, _ in os.walk(directory, onerror=lambda error: unreadable(error, error.filename)):
                    error = _search_error(folder, listing=False)
                    if error is not None:
                        unreadable(error, folder)
                        folders.clear()
    problems = list({problem.message: problem for problem in problems}.values())
    named = [problem.path for problem in problems]
    return [problem for problem in problems if not _is_below(problem.path, named)]


def _search_error(directory: str | Path, listing: bool = True) -> OSError | None:
    """Why ``directory`` cannot be searched, or None (also when it is not there or no
    directory): its names cannot be listed (``listing``: no read permission, a stale mount), or
    nothing in it can be looked at (no search permission: a directory of mode 0644 lists its
    names, but every file in it is out of reach, and glob.glob passes over what lies below it)."""
    try:
        if listing:
            os.scandir(directory).close()
        os.stat(os.path.join(directory, "."))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        return exc
    return None


def _is_below(path: Path, directories: Sequence[Path]) -> bool:
    """Whether ``path`` lies inside one of ``directories`` (as spelt: the paths of one search)."""
    return any(directory in path.parents for directory in directories)


def _movies_in_directory(directory: Path, problems: list[InputProblem]) -> list[Path]:
    """The movie files below ``directory`` (symlinks to files included, directory symlinks not
    followed); a directory that cannot be listed adds a problem."""
    def unreadable(error: OSError) -> None:
        where = Path(error.filename) if error.filename else directory
        lost = "" if where == directory else "; the movies in it are not converted"
        problems.append(InputProblem(where, f"{where}: cannot be searched ({error.strerror or error}){lost}"))

    found = []
    for folder, folders, names in os.walk(directory, onerror=unreadable):
        error = _search_error(folder, listing=False)  # listed, but perhaps not searchable (mode 0644)
        if error is not None:
            error.filename = folder
            unreadable(error)
            folders.clear()
            continue
        found.extend(candidate for candidate in (Path(folder) / name for name in names)
                     if candidate.suffix.lower() in MOVIE_SUFFIXES and _is_regular(candidate, problems))
    return found


def _is_regular(path: Path, problems: list[InputProblem]) -> bool:
    """Whether ``path`` is a regular file (or a link to one); one that cannot be looked at for
    another reason than its absence adds a problem."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return False  # a dangling link, or removed since it was listed
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # ``**`` through a symlink loop, where the path gets too deep
            return False
        problems.append(InputProblem(path, f"{path}: cannot be read ({exc.strerror or exc})"))
        return False


def expand_inputs(inputs: Sequence[str], output_dir: Path | None = None) -> list[Path]:
    """Expand ``--i`` arguments into movie paths, in order, without duplicates
    (:func:`search_inputs`).

    Raises:
        InputError: an argument names nothing (no such file, a pattern that matches nothing, a
            directory without movies, a list or STAR file without movies), or a directory cannot
            be searched.
    """
    movies, problems = search_inputs(inputs, output_dir)
    if problems:
        raise problem_error(problems)
    return movies


def problem_error(problems: Sequence[InputProblem]) -> InputError:
    """One error for the problems of the inputs: the problem's own, or their messages joined."""
    if len(problems) == 1:
        return problems[0].error(problems[0].message)
    error = NamesNoMovieError if all(problem.names_nothing for problem in problems) else InputError
    return error("; ".join(problem.message for problem in problems))


def _pattern_base(pattern: str) -> Path:
    """The directory a glob pattern searches: its leading parts without glob characters."""
    parts = []
    for part in Path(pattern).parts:
        if GLOB_CHARACTERS & set(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _without_outputs(found: list[Path], searched: Path, output_dir: Path | None) -> list[Path]:
    """``found`` (what the directory or pattern ``searched`` gives) without the run's outputs, so
    that a rerun or ``--watch`` never converts them again (``--i 'Movies/**/*.tif' --o
    Movies/conv`` converted ``Movies/conv/Movies/a.tif`` into ``Movies/conv/Movies/conv/...``, and
    a watch did so without end): the files inside ``--o`` where ``--o`` lies below ``searched``,
    and the outputs of other movies found (``--o .`` writes ``Movies/a.tif`` beside
    ``Movies/a.mrc``). Where ``--o`` is ``searched`` itself or above it, everything found is
    inside it and only outputs of other movies are left out."""
    if output_dir is None:
        return found
    out = output_dir.resolve()
    base = searched.resolve()
    below = out != base and base in out.parents
    made_by: dict[str, set[Path]] = {}
    for movie in found:
        try:
            made_by.setdefault(os.path.realpath(output_path(movie, output_dir)), set()).add(movie)
        except InputError:
            continue
    kept = []
    for movie in found:
        real = os.path.realpath(movie)
        if below and out in Path(real).parents:
            continue
        if made_by.get(real, set()) - {movie}:
            continue
        kept.append(movie)
    return kept


def _one_name_per_file(paths: Iterable[Path]) -> list[Path]:
    """``paths`` without later paths to a directory entry already found (the same entry reached
    through directory symlinks: ``**`` through a symlink loop), in order. Every name of a file is
    kept (a hard link, a symlink beside the movie) and converted under that name, as RELION
    converts each name it is given."""
    unique: dict[object, Path] = {}
    for path in paths:
        try:
            key: object = directory_entry(path)
        except (OSError, RuntimeError, ValueError):
            key = path
        unique.setdefault(key, path)
    return list(unique.values())


def printable(path: str | os.PathLike[str]) -> str:
    """``path`` as it can be printed and written into any text: the bytes of a name that is not
    UTF-8 text (Python holds them as surrogates, which a strict terminal or a UTF-8 file refuses)
    shown as ``\\xff``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8_text(path: str | os.PathLike[str]) -> bool:
    """The path's bytes are UTF-8 text (no byte Python had to hold as a surrogate)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def output_path(movie: Path, output_dir: Path) -> Path:
    """Where the TIFF of ``movie`` goes: ``<o>/<movie path without its last extension>.tif``, as
    RELION names it, except that nothing lands outside ``<o>``:

    * the path is first normalised lexically (``a/./b/../c.mrc`` -> ``a/c.mrc``);
    * an absolute path loses its root: ``/data/x.mrc`` -> ``<o>/data/x.tif`` (as in RELION);
    * each remaining ``..`` becomes ``__``: ``../raw/x.mrc`` -> ``<o>/__/raw/x.tif`` (RELION writes
      ``<o>/../raw/x.tif``, outside the output directory).

    Raises:
        InputError: not a movie file name (``.``), or a name whose bytes are not UTF-8 text: the
            movie STAR file (text, UTF-8) could not list its TIFF.
    """
    parts = PurePath(os.path.normpath(str(movie))).parts
    if parts and PurePath(movie).is_absolute():
        parts = parts[1:]  # drop "/" (or a drive and root)
    parts = tuple("__" if part == ".." else part for part in parts)
    if not parts:
        raise InputError(f"{printable(movie)}: not a movie file name")
    if not is_utf8_text(movie):
        raise InputError(f"{printable(movie)}: its name is not UTF-8 text (the bytes shown as \\x..), so movies.star "
                         "could not list its TIFF; rename the movie (nothing was written for it)")
    relative = Path(*parts)
    return output_dir / relative.with_name(relative.stem + ".tif")  # stem: without the last extension


def directory_entry(path: Path) -> Path:
    """The directory entry ``path`` names, with every directory symlink on the way resolved; the
    last component is kept as it is, since a rename replaces that entry (even a symlink) and
    never writes through it."""
    return Path(path).parent.resolve() / Path(path).name
