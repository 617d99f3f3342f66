"""How the kernels' cached machine code is loaded (cryotiff.kernels._jit): without numba's
refresh of its target context, and still right, in fresh processes as the command runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cryotiff import kernels as K
from cryotiff.kernels._jit import loads_without_refresh

# Another numba keeps its own loader (kernels/_jit.py); these tests are then about nothing.
needs_the_loader_read = pytest.mark.skipif(
    not loads_without_refresh(), reason="this numba's kernels load with numba's own refresh")

# A kernel of its own, so that the test sees it compiled, then loaded, then compiled again for
# a new signature. It allocates (the NRT) and uses numpy functions numba implements.
_MODULE = textwrap.dedent('''
    import numpy as np
    from cryotiff.kernels._jit import _jit

    @_jit
    def sorted_cumulative(values):
        out = np.empty(values.size, values.dtype)
        total = values.dtype.type(0)
        for i, value in enumerate(np.sort(values)):
            total += value
            out[i] = total
        return out
''')

_RUN = textwrap.dedent('''
    import sys
    import numpy as np
    import cached_kernel
    values = np.array([5, 3, 9, 1], np.int64)
    print(cached_kernel.sorted_cumulative(values).tolist())
    hits = sum(cached_kernel.sorted_cumulative.stats.cache_hits.values())
    print(hits, "numba.typed.typeddict" in sys.modules)
    print(cached_kernel.sorted_cumulative(values.astype(np.float32)).tolist())
''')


def _run(code: str, cwd, *, env_path) -> list[str]:
    completed = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                               timeout=300, env={**os.environ, "PYTHONPATH": env_path})
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.splitlines()


@needs_the_loader_read
def test_a_cached_kernel_loads_without_the_refresh_and_a_new_signature_still_compiles(tmp_path):
    (tmp_path / "cached_kernel.py").write_text(_MODULE)
    path = os.pathsep.join([str(tmp_path), *sys.path])

    first = _run(_RUN, tmp_path, env_path=path)
    assert first[0] == "[1, 4, 9, 18]"
    assert first[1].split()[0] == "0"  # compiled, nothing in the cache yet

    second = _run(_RUN, tmp_path, env_path=path)
    assert second[0] == "[1, 4, 9, 18]"
    hits, refreshed = second[1].split()
    assert hits == "1", "the second process should load the kernel from the cache"
    # numba's refresh imports its typed containers; loading machine code does not need them.
    # (The float32 signature below compiles, and that compile does the full refresh.)
    assert refreshed == "False"
    assert second[2] == "[1.0, 4.0, 9.0, 18.0]"


@needs_the_loader_read
def test_the_package_kernels_use_the_loader_without_the_refresh():
    from cryotiff.kernels._jit import _KernelCache

    for name in ("deflate_huffman_encode", "eer_place_events", "gain_update", "lzw_encode", "lzw_decodes_to"):
        assert type(getattr(K, name)._cache) is _KernelCache, name


@needs_the_loader_read
def test_cached_kernels_in_a_fresh_process_give_the_same_streams_as_zlib_reads():
    """The Huffman-only encoder and the LZW encoder and decoder, loaded from the cache in a
    fresh process (as every conversion loads them), against zlib and imagecodecs."""
    rows = np.random.default_rng(7).poisson(1.0, (64, 96)).astype(np.uint8)
    # Warm the cache in this process (it compiles here if nothing was cached).
    out = np.empty(K.deflate_huffman_bound(rows.size, 1) // 4, np.uint32)
    K.deflate_huffman_encode(rows.reshape(-1), 0, 96, 64, 96, 64, out)
    K.lzw_encode(rows.reshape(-1), 0, 96, 64, 96, np.empty(K.lzw_bound(rows.size), np.uint8))
    code = textwrap.dedent('''
        import sys, zlib
        import imagecodecs
        import numpy as np
        from cryotiff import kernels as K
        rows = np.random.default_rng(7).poisson(1.0, (64, 96)).astype(np.uint8)
        out = np.empty(K.deflate_huffman_bound(rows.size, 1) // 4, np.uint32)
        n = K.deflate_huffman_encode(rows.reshape(-1), 0, 96, 64, 96, 64, out)
        assert zlib.decompress(out.view(np.uint8)[:n].tobytes()) == rows.tobytes()
        lzw = np.empty(K.lzw_bound(rows.size), np.uint8)
        n = K.lzw_encode(rows.reshape(-1), 0, 96, 64, 96, lzw)
        assert imagecodecs.lzw_decode(lzw[:n].tobytes()) == rows.tobytes()
        assert sum(K.deflate_huffman_encode.stats.cache_hits.values()) == 1
        assert sum(K.lzw_encode.stats.cache_hits.values()) == 1
        print("numba.typed.typeddict" in sys.modules)
    ''')
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["False"]


def test_numba_versions_outside_those_read_keep_numbas_refresh():
    from cryotiff.kernels._jit import loads_without_refresh

    assert loads_without_refresh("0.60.0") and loads_without_refresh("0.68.1")
    assert not loads_without_refresh("0.59.1") and not loads_without_refresh("0.70.0")
    assert not loads_without_refresh("1.0.0") and not loads_without_refresh("dev")
