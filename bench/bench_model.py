"""Forward pass of SSD300 on the CPU: images/s at batch 1 and 8, on each backend.

Run: .venv/bin/python bench/bench_model.py            (all three backends, one process each)
     .venv/bin/python bench/bench_model.py --backend jax
Prints images/s, the achieved GFLOP/s (31.2 G multiply-adds = 62.4 GFLOP per image) and,
measured in the same run, the machine's float32 matmul rate (NumPy, 2048x2048).
"""

import argparse
import os
import subprocess
import sys
import time
from common import matmul_gflops  # noqa: E402  (bench/ is on sys.path)

FLOP_PER_IMAGE = 2 * 31.2e9


def run_backend(backend):
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import numpy as np

    from ssd300 import SSD300

    model = SSD300((300, 300, 3))
    peak = matmul_gflops()
    for batch in (1, 8):
        x = np.random.default_rng(0).normal(0, 50, (batch, 300, 300, 3)).astype("float32")
        model.predict_on_batch(x)
        runs = 6 if batch == 1 else 3
        t = time.perf_counter()
        for _ in range(runs):
            model.predict_on_batch(x)
        rate = batch * runs / (time.perf_counter() - t)
        print(f"{backend:<10} batch {batch}: {rate:6.2f} images/s  {rate * FLOP_PER_IMAGE / 1e9:7.1f} GFLOP/s"
              f"  (NumPy float32 matmul: {peak:6.1f} GFLOP/s)", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend")
    args = parser.parse_args()
    if args.backend:
        run_backend(args.backend)
        return
    for backend in ("tensorflow", "jax", "torch"):
        subprocess.run([sys.executable, __file__, "--backend", backend], check=True)


if __name__ == "__main__":
    main()
