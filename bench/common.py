"""What the benchmarks share: the machine's NumPy float32 matmul rate, the yardstick for every ratio."""

import time


def matmul_gflops(n=2048, repeat=5):
    """GFLOP/s of ``repeat`` NumPy float32 ``n x n`` matrix products (wall time, all BLAS threads)."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    t = time.perf_counter()
    for _ in range(repeat):
        a @ a
    return 2 * n ** 3 * repeat / (time.perf_counter() - t) / 1e9
