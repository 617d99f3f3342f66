"""How much memory this process can still get, so that a frame that cannot fit is refused with
its size before it is allocated (rather than ending as "out of memory", or in the kernel's
out-of-memory killer, which allocations that only touch their pages later can reach).

The room is the smallest of: what the machine has available (``MemAvailable`` plus ``SwapFree``
in ``/proc/meminfo``), what the process's control group allows (the tightest cgroup v2
``memory.max`` less the group's ``memory.current`` but for its page cache: batch schedulers such
as Slurm limit jobs so) and what its address-space limit leaves (``RLIMIT_AS``, ``ulimit -v``,
less the ``VmSize`` in ``/proc/self/status``). What cannot be read counts as no limit: on a
system without these files nothing is refused.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

from ..errors import NotEnoughMemoryError


#: Where the process's control group is named, and where cgroup v2 groups are.
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class MemoryRoom:
    """Bytes this process can still allocate, and which limit sets it.

    Attributes:
        nbytes: the room, in bytes.
        limit: what sets it, completing "of memory left by ...": ``the machine (available
            memory and free swap)``, ``this process's control group (memory.max)`` or ``this
            process's address-space limit (ulimit -v)``.
    """

    nbytes: int
    limit: str


def _proc_kib(path: str, key: str) -> int | None:
    """The number of kibibytes a ``key: N kB`` line of ``path`` (``/proc/meminfo``,
    ``/proc/self/status``) gives, or None."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _machine_room() -> MemoryRoom | None:
    available = _proc_kib("/proc/meminfo", "MemAvailable")
    if available is None:
        return None
    swap = _proc_kib("/proc/meminfo", "SwapFree") or 0
    return MemoryRoom((available + swap) * 1024, "the machine (available memory and free swap)")


def _cgroup_room() -> MemoryRoom | None:
    """The room the tightest ``memory.max`` of the process's control group and its ancestors
    leaves: the limit less what the group uses besides the page cache (file pages, which the
    kernel reclaims before it refuses memory)."""
    try:
        lines = PROC_SELF_CGROUP.read_text().splitlines()
        relative = next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))
    except (OSError, StopIteration, IndexError):
        return None
    root = CGROUP_ROOT
    group = root / relative.strip("/")
    rooms = []
    for folder in [group, *group.parents]:
        try:
            maximum = (folder / "memory.max").read_text().strip()
            if maximum != "max":
                used = int((folder / "memory.current").read_text())
                stats = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
                used -= int(stats.get("file", 0))
                rooms.append(max(int(maximum) - max(used, 0), 0))
        except (OSError, ValueError):
            pass
        if folder == root:
            break
    if not rooms:
        return None
    return MemoryRoom(min(rooms), "this process's control group (memory.max)")


def _address_space_room() -> MemoryRoom | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    used_kib = _proc_kib("/proc/self/status", "VmSize") if soft != resource.RLIM_INFINITY else None
    if used_kib is None:
        return None
    return MemoryRoom(max(soft - used_kib * 1024, 0), "this process's address-space limit (ulimit -v)")


def memory_room() -> MemoryRoom | None:
    """The bytes this process can still allocate (the smallest limit), or None if no limit can
    be read (then nothing should be refused)."""
    rooms = [room for room in (_machine_room(), _cgroup_room(), _address_space_room()) if room is not None]
    return min(rooms, key=lambda room: room.nbytes) if rooms else None


def size_text(nbytes: float) -> str:
    """``nbytes`` for a message: ``3.20 GB`` (10**9 bytes) from 1 GB on, else ``24.6 MB``."""
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


#: Frames any conversion holds at once, at the least: the frame and the page made of it (its
#: strips encoded, then decoded again to be checked against it). Measured peaks are higher (2.6
#: to 2.8 frames at ``--j 1``, 3.8 to 4.2 at ``--j 2``, on 8192 x 8192 MRC movies), so a movie
#: refused for this could not have been converted.
MINIMUM_FRAMES_AT_ONCE = 2


def refuse_frames_beyond_memory(path: str | os.PathLike[str], shape_yx: tuple[int, int], what: str,
                                frame_nbytes: int, unit: str = "frames") -> None:
    """Before the first frame of a movie is allocated: refuse frames larger than the memory this
    process can still get (:func:`memory_room`), naming the file, their size and what converting
    it needs; and frames that fit, but not :data:`MINIMUM_FRAMES_AT_ONCE` of them (a frame just
    under the memory left ran out of memory only after it was read, a minute for a frame of
    several GB). Only what no conversion can do without is refused: a conversion holds about
    four at once at ``--j 1`` and ``--j 2`` (peak memory measured on 8192 x 8192 MRC movies of
    int16 noise: 3.8 frames at ``--j 2``; ``--j 1`` the same since each page is checked beside
    the next one, 2.6 before), so no movie that fits is refused.

    ``what``: the sample type and where it comes from, in the message's parentheses
    (``MRC mode 1, int16``); ``unit``: what the movie's frames are called (``pages`` for EER).

    Raises:
        NotEnoughMemoryError: one frame of ``frame_nbytes`` bytes, or two, do not fit.
    """
    room = memory_room()
    if room is None or MINIMUM_FRAMES_AT_ONCE * frame_nbytes <= room.nbytes:
        return
    ny, nx = shape_yx
    if frame_nbytes > room.nbytes:
        raise NotEnoughMemoryError(
            f"{path}: its {unit} of {ny} x {nx} pixels ({what}) take {size_text(frame_nbytes)} each, more than the "
            f"{size_text(room.nbytes)} of memory left by {room.limit}; converting it needs about "
            f"{size_text(4 * frame_nbytes)} (four {unit} at once at --j 1 or 2, one more for each further thread)"
        )
    raise NotEnoughMemoryError(
        f"{path}: its {unit} of {ny} x {nx} pixels ({what}) take {size_text(frame_nbytes)} each; converting it needs "
        f"at least {size_text(MINIMUM_FRAMES_AT_ONCE * frame_nbytes)} (two {unit} at once; about "
        f"{size_text(4 * frame_nbytes)} at --j 1 or 2, one more {unit[:-1]} for each further thread), more than the "
        f"{size_text(room.nbytes)} of memory left by {room.limit}"
    )
