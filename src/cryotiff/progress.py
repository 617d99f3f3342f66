"""How far a run is: movies done of N, input bytes done of the total, MB/s and the time left.

A :class:`RunProgress` only counts; ``cli.py`` and ``mpi.py`` show it (a progress bar on a
terminal, a plain line after each movie in a log). Bytes are the input files' sizes, known before
any movie is read, so the time left is meaningful from the first movie on, also when movies
differ in size. The rate counts only what was converted, over the time there was work: a movie
that fails (often at once, at its header) or is skipped leaves the total instead of counting as
bytes done, and the time ``--watch`` spends waiting with every known movie done is left out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .report import format_bytes


def file_nbytes(path: Path) -> int:
    """The size of ``path`` in bytes; 0 if it cannot be read (the movie then fails quickly)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def format_duration(seconds: float) -> str:
    """``3725`` -> ``1:02:05`` (hours:minutes:seconds)."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


@dataclass
class RunProgress:
    """The counts behind the progress display of one run.

    Attributes:
        n_movies: movies the run will handle (converted, skipped or failed).
        total_bytes: input bytes of the movies still to convert, plus those done (a skipped
            movie's bytes leave the total).
        done_movies: movies finished (converted, skipped or failed).
        done_bytes: input bytes of the movies converted.
        clock: seconds, monotonic (replaceable in tests).
    """

    n_movies: int
    total_bytes: int
    nbytes_of: dict[Path, int] = field(default_factory=dict)
    done_movies: int = 0
    done_bytes: int = 0
    clock: Callable[[], float] = time.monotonic
    started: float = 0.0
    _partial: dict[Path, int] = field(default_factory=dict)
    _idle_seconds: float = 0.0  # with every known movie done (--watch waiting for more)
    _idle_since: float | None = None

    def __post_init__(self) -> None:
        self.started = self.clock()
        self._update_idle()

    def _update_idle(self) -> None:
        """Start or stop the idle clock: idle while every movie known so far is done."""
        idle = self.done_movies >= self.n_movies
        now = self.clock()
        if idle and self._idle_since is None:
            self._idle_since = now
        elif not idle and self._idle_since is not None:
            self._idle_seconds += now - self._idle_since
            self._idle_since = None

    @classmethod
    def of(cls, sources: Iterable[Path], clock: Callable[[], float] = time.monotonic) -> RunProgress:
        """Progress over the movies ``sources`` (their file sizes are read now)."""
        sizes = {Path(source): file_nbytes(Path(source)) for source in sources}
        return cls(n_movies=len(sizes), total_bytes=sum(sizes.values()), nbytes_of=sizes, clock=clock)

    def add(self, sources: Iterable[Path]) -> None:
        """More movies for the run (``--watch`` finds them as they arrive)."""
        for source in sources:
            source = Path(source)
            if source not in self.nbytes_of:
                self.nbytes_of[source] = file_nbytes(source)
                self.n_movies += 1
                self.total_bytes += self.nbytes_of[source]
        self._update_idle()

    def pages_done(self, source: Path, done: int, total: int) -> int:
        """``done`` of ``total`` pages of ``source`` are written; returns the bytes this adds."""
        size = self.nbytes_of.get(source, 0)
        now = size * done // total if total else 0
        added = now - self._partial.get(source, 0)
        self._partial[source] = now
        return added

    def movie_done(self, source: Path, skipped: bool = False, failed: bool = False) -> int:
        """A movie is finished; returns the bytes this adds to ``bytes_so_far`` (negative for a
        movie that failed part-way: its pages done so far leave the count). A skipped or failed
        movie's bytes leave the total."""
        size = self.nbytes_of.get(source, 0)
        before = self._partial.pop(source, 0)
        self.done_movies += 1
        self._update_idle()
        if skipped or failed:
            self.total_bytes -= size
            return -before
        self.done_bytes += size
        return size - before

    @property
    def bytes_so_far(self) -> int:
        return self.done_bytes + sum(self._partial.values())

    @property
    def seconds(self) -> float:
        """Seconds of the run with work to do (the idle time of ``--watch`` left out)."""
        now = self.clock()
        idle = self._idle_seconds + (now - self._idle_since if self._idle_since is not None else 0.0)
        return max(now - self.started - idle, 0.0)

    def rate_and_time_left(self) -> str:
        """``250.0 MB/s, about 0:25:40 left`` (no time left when nothing is left or known)."""
        text = f"{self.bytes_per_second / 1e6:.1f} MB/s"
        left = self.seconds_left
        if self.done_movies < self.n_movies and left is not None:
            text += f", about {format_duration(left)} left"
        return text

    @property
    def bytes_per_second(self) -> float:
        elapsed = self.seconds
        return self.bytes_so_far / elapsed if elapsed > 0 else 0.0

    @property
    def seconds_left(self) -> float | None:
        """None until something was done."""
        rate = self.bytes_per_second
        if rate <= 0:
            return None
        return max(self.total_bytes - self.bytes_so_far, 0) / rate

    def line(self) -> str:
        """``Progress: 3 of 120 movies, 12.30 GB of 400.00 GB (3 %), 250.0 MB/s, about 0:25:40 left``."""
        percent = 100.0 * self.bytes_so_far / self.total_bytes if self.total_bytes else 100.0
        return (f"Progress: {self.done_movies} of {self.n_movies} movies, {format_bytes(self.bytes_so_far)} of "
                f"{format_bytes(self.total_bytes)} ({percent:.0f} %), {self.rate_and_time_left()}")
