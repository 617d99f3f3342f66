"""The one numba decorator every kernel is compiled with (see the package docstring), and how
the kernels' cached machine code is loaded.

numba's own cache loader refreshes the whole target context before loading any cached
function: it imports and registers every implementation numba has (typed lists and dicts,
linear algebra, random generators, unicode, ...), so that a compile could use them. Loading
machine code needs none of that, only numba's runtime (the NRT, which allocates arrays) and the
helpers its context installs when it is created. The refresh was about 0.2 s of CPU and 10 MiB
of every run that loads a kernel (a third of loading the first one); the kernels' cache loads
without it. A kernel that must be compiled still gets the full refresh, from numba's compiler
itself. Only the kernels of this package load this way; other numba code keeps numba's loader.

An entry numba cannot load ended the call with whatever unpickling raised: a truncated index
(``.nbi``) or data file (``.nbc``), say after a full disk or a crash, or a data file written
for a kernel of another module, which numba takes for this one's since it matches entries by
the contents of the source file (a copy of the package under another name caches its kernels
under the same names). The kernels' cache compiles the kernel again instead, as for a missing
entry, and writes the entry anew: the run is slower by that compilation, never stopped by it.
"""

from __future__ import annotations

import numba
from numba.core.caching import FunctionCache
from numba.core.runtime import rtsys


#: The numba versions whose cache loader was read for this (numba/core/caching.py:
#: ``Cache.load_overload`` refreshes the target context, whose first step is the NRT's
#: initialisation, and then calls ``_load_overload``; the same from 0.60 to 0.68 and on numba's
#: main branch; tested with 0.68). Another version keeps numba's refresh: slower to start,
#: never wrong.
NUMBA_VERSIONS_LOADED_WITHOUT_REFRESH = ((0, 60), (0, 70))


def loads_without_refresh(version: str = numba.__version__) -> bool:
    """Whether the kernels of this numba ``version`` load without numba's refresh."""
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:  # a development build's odd version string: numba's own loader
        return False
    first, after_last = NUMBA_VERSIONS_LOADED_WITHOUT_REFRESH
    return first <= major_minor < after_last


_LOADS_WITHOUT_REFRESH = loads_without_refresh()


class _KernelCache(FunctionCache):
    """numba's cache of a function's machine code, loaded with the runtime initialised but
    without numba's refresh of the target context; an entry that cannot be loaded counts as
    missing (see the module docstring)."""

    def load_overload(self, sig, target_context):
        if _LOADS_WITHOUT_REFRESH:
            # The part of numba's refresh that loading needs: compiling and registering the NRT's
            # functions, which cached code that allocates arrays calls.
            rtsys.initialize(target_context)
        else:
            target_context.refresh()
        try:
            with self._guard_against_spurious_io_errors():
                compiled = self._load_overload(sig, target_context)
        except Exception:  # damaged or foreign: whatever unpickling or relinking it raised
            compiled = None
        else:
            # An entry of a kernel of another module (unpickling it imported that module).
            module = getattr(getattr(compiled, "fndesc", None), "modname", self._py_func.__module__)
            if module == self._py_func.__module__:
                return compiled
            compiled = None
        try:
            self.flush()  # an empty index in its place (written whole, then renamed): the entry is saved anew
        except OSError:
            pass
        return compiled

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        except Exception:  # an index that cannot be read or replaced: the kernel stays compiled in memory
            pass


def _load_without_refresh(dispatcher):
    """Give a dispatcher ``_KernelCache``'s loader; a numba whose cache is not the
    ``FunctionCache`` this was written for keeps its own loader."""
    cache = getattr(dispatcher, "_cache", None)
    if type(cache) is FunctionCache and hasattr(cache, "_load_overload") \
            and hasattr(cache, "_guard_against_spurious_io_errors"):
        cache.__class__ = _KernelCache
    return dispatcher


def _decorator(**options):
    compile_with_numba = numba.njit(nogil=True, cache=True, error_model="numpy", **options)
    return lambda function: _load_without_refresh(compile_with_numba(function))


# error_model="numpy": float division by zero gives inf/NaN as in numpy and C (RELION), instead
# of Python's ZeroDivisionError.
_jit = _decorator()
_inline = _decorator(inline="always")
