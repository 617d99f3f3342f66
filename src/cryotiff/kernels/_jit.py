"""The one numba decorator every kernel is compiled with (see the package docstring)."""

from __future__ import annotations

import numba

# error_model="numpy": float division by zero gives inf/NaN as in numpy and C (RELION), instead
# of Python's ZeroDivisionError.
_jit = numba.njit(nogil=True, cache=True, error_model="numpy")
_inline = numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
