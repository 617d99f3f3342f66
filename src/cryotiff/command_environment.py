"""What the commands (``convert-to-tiff``, ``convert-to-tiff-mpi``) set in their own environment
before numpy is imported. ``cli.py`` imports this module first, and ``mpi.py`` imports ``cli.py``
first; the library itself sets nothing, so a program that imports cryotiff keeps its own settings.

* ``OPENBLAS_NUM_THREADS=1``, unless the environment already sets it. numpy's OpenBLAS starts one
  thread per processor when numpy is imported, and each spins for about 0.1 s waiting for work
  that never comes: cryotiff uses no BLAS routine on a large array (the gain check's dot
  products are of short blocks). That spin took about 60 ms of CPU from every start-up on a
  2-core machine (docs/benchmarks/vs-relion.md, "OpenBLAS's threads at start-up"), and on a
  many-core node each MPI rank would start as many threads as the node has processors.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
