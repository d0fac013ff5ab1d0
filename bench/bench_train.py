"""Training step of SSD300 (model + MultiboxLoss + Adam, compiled as the training compiles it).

Run: .venv/bin/python bench/bench_train.py                       (TensorFlow, JAX, PyTorch; 300 and 128)
     .venv/bin/python bench/bench_train.py --backends tensorflow --sizes 300 --steps 5
     .venv/bin/python bench/bench_train.py --fc6 native --jit off     (today's layer, no XLA)
     .venv/bin/python bench/bench_train.py --backends tensorflow --sizes 300 --torchvision /path/to/python

Each backend runs in its own process with ``KERAS_BACKEND`` set. A step is
``model.train_on_batch`` on NumPy arrays (the conversion to tensors
included), after ``model.compile(optimizer=Adam(3e-4),
loss=MultiboxLoss(21, neg_pos_ratio=2.0).compute_loss, jit_compile=...)``;
``--jit settings`` (the default) takes ``ssd300.speed.fit_settings``. The
targets come from ``BBoxUtility.assign_boxes`` on random boxes, so the loss
mines real positives and negatives.

``--torchvision PYTHON`` also times torchvision's ``ssd300_vgg16`` (Adam,
``weights=None``, 21 classes; ``tools/gpu_bench.py``'s torchvision section)
at 300x300 and the same batch, in that interpreter (one with torch and
torchvision: PyPI's CPU build of torch cannot load torchvision's operators,
its CUDA build runs on the CPU too), and prints each backend's step speed
as a multiple of torchvision's, by wall time and by CPU time.

Prints images/s (median step; best step in brackets), the achieved GFLOP/s
(3x the forward FLOPs, counted from the model's Conv2D and Dense layers:
62.4 GFLOP per 300x300 image) and its ratio to the NumPy float32 matmul
rate (2048x2048, best of the rounds before and after the steps, in the same
process). On a shared machine the wall-clock figures move with the others'
load (printed, as ``uptime``'s); the same rates per second of this process's
CPU time ("CPU ratio") move much less. ``--json FILE`` writes the rows.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def matmul_gflops(n=2048, repeat=5):
    """NumPy float32 ``n x n`` matmul rate: ``(GFLOP per second, GFLOP per CPU second)``, best of three.

    The second, per second of this process's CPU time (all threads), moves
    less with the load of a shared machine.
    """
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    wall = cpu = 0.0
    for _ in range(3):
        t, c = time.perf_counter(), time.process_time()
        for _ in range(repeat):
            a @ a
        flop = 2 * n ** 3 * repeat / 1e9
        wall = max(wall, flop / (time.perf_counter() - t))
        cpu = max(cpu, flop / (time.process_time() - c))
    return wall, cpu


def forward_flops(model):
    """FLOPs of one image's forward pass: ``2 x`` the multiply-adds of the Conv2D and Dense layers."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, rows, cols, filters = layer.output.shape
            kh, kw, cin, _ = layer.kernel.shape
            total += 2 * rows * cols * kh * kw * cin * filters
        elif isinstance(layer, keras.layers.Dense):
            cin, cout = layer.kernel.shape
            total += 2 * cin * cout
    return total


def training_batch(model, batch, seed=0):
    """``(x, y)``: random Caffe-scaled images and targets of 1-4 random boxes per image."""
    import numpy as np

    from ssd300.priors import priors_from_model
    from ssd300.ssd_utils import BBoxUtility

    rng = np.random.default_rng(seed)
    num_classes = model.output_shape[-1] - 12
    util = BBoxUtility(num_classes, priors_from_model(model))
    targets = []
    for _ in range(batch):
        n = rng.integers(1, 5)
        wh = rng.uniform(0.1, 0.6, (n, 2))
        xy = rng.uniform(0, 1, (n, 2)) * (1 - wh)
        labels = np.eye(num_classes - 1)[rng.integers(0, num_classes - 1, n)]
        targets.append(util.assign_boxes(np.hstack([xy, xy + wh, labels]), dtype=np.float32))
    x = rng.normal(0, 50, (batch,) + model.input_shape[1:]).astype("float32")
    return x, np.stack(targets)


def load_average():
    return os.getloadavg()[0]


def run_backend(args):
    """Time the steps on this process's backend; returns the result rows."""
    sys.path.insert(0, ROOT)
    import keras
    import numpy as np

    from ssd300 import speed
    from ssd300.ssd_training import MultiboxLoss
    from ssd300.ssd_v2 import SSD300v2

    backend = keras.backend.backend()
    if args.jit == "settings":
        jit = speed.fit_settings(backend)["jit_compile"]
    else:
        jit = {"on": True, "off": False, "auto": "auto"}[args.jit]
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy(f"mixed_{args.mixed_precision}")
    rows = []
    peak_before = matmul_gflops()
    for size in args.sizes:
        keras.utils.set_random_seed(0)
        model = SSD300v2((size, size, 3), num_classes=21)
        if args.fc6 != "auto":
            model.get_layer("fc6").method = args.fc6
        flops = 3 * forward_flops(model)
        model.compile(optimizer=keras.optimizers.Adam(3e-4),
                      loss=MultiboxLoss(21, neg_pos_ratio=2.0).compute_loss, jit_compile=jit)
        x, y = training_batch(model, args.batch)
        t = time.perf_counter()
        for _ in range(args.warmup):
            loss = model.train_on_batch(x, y)
        compile_s = time.perf_counter() - t
        times, cpu = [], []
        for _ in range(args.steps):
            t, c = time.perf_counter(), time.process_time()
            loss = model.train_on_batch(x, y)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        step = float(np.median(times))
        rows.append(dict(backend=backend, size=size, batch=args.batch, jit_compile=jit,
                         fc6=args.fc6, mixed_precision=args.mixed_precision,
                         fc6_taps=model.get_layer("fc6").uses_taps(), step_s=step,
                         best_step_s=min(times), images_per_s=args.batch / step,
                         gflop_per_image=flops / 1e9, gflops=args.batch * flops / step / 1e9,
                         best_gflops=args.batch * flops / min(times) / 1e9,
                         cpu_step_s=float(np.median(cpu)),
                         gflops_per_cpu_s=args.batch * flops / float(np.median(cpu)) / 1e9,
                         loss=float(np.asarray(loss)), warmup_s=compile_s, load=load_average()))
    peak_after = matmul_gflops()
    peak, peak_cpu = max(peak_before[0], peak_after[0]), max(peak_before[1], peak_after[1])
    for row in rows:
        row.update(matmul_gflops=peak, matmul_gflops_per_cpu_s=peak_cpu, ratio=row["gflops"] / peak,
                   best_ratio=row["best_gflops"] / peak, cpu_ratio=row["gflops_per_cpu_s"] / peak_cpu)
    return rows


def format_table(rows):
    lines = ["| backend | size | batch | jit | fc6 taps | step s (best) | images/s | GFLOP/s | matmul GFLOP/s "
             "| ratio (best) | CPU s | GFLOP/CPU s | matmul GFLOP/CPU s | CPU ratio | load |",
             "|" + " --- |" * 15]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['size']} | {r['batch']} | {r['jit_compile']} | {r['fc6_taps']} "
                     f"| {r['step_s']:.2f} ({r['best_step_s']:.2f}) | {r['images_per_s']:.2f} "
                     f"| {r['gflops']:.1f} | {r['matmul_gflops']:.1f} | {r['ratio']:.2f} ({r['best_ratio']:.2f}) "
                     f"| {r['cpu_step_s']:.2f} | {r['gflops_per_cpu_s']:.1f} | {r['matmul_gflops_per_cpu_s']:.1f} "
                     f"| {r['cpu_ratio']:.2f} | {r['load']:.1f} |")
    return "\n".join(lines)


def run_torchvision(python, size, batch, steps):
    """torchvision's ``ssd300_vgg16`` step in ``python``: its result row, or ``{"error": ...}``."""
    command = [python, os.path.join(ROOT, "tools", "gpu_bench.py"), "--section", "torchvision",
               "--section-args", "float32", "--size", str(size), "--batch", str(batch), "--steps", str(steps)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    except OSError as e:
        return {"error": f"cannot run {python}: {e}"}
    results = [line[len("RESULT "):] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not results:
        return {"error": f"{python} exited {done.returncode}: {done.stderr[-1500:]}"}
    result = json.loads(results[-1])
    return {"error": result["skipped"]} if "skipped" in result else result


def compare_with_torchvision(rows, torchvision):
    """Lines giving each 300x300 row's images/s as a multiple of torchvision's (wall and CPU time)."""
    lines = [f"torchvision ssd300_vgg16, {torchvision['size']}x{torchvision['size']}, batch "
             f"{torchvision['batch']}, {torchvision['threads']} threads: {torchvision['step_s']:.2f} s per step "
             f"(best {torchvision['best_step_s']:.2f}; CPU {torchvision['cpu_step_s']:.2f} s), "
             f"{torchvision['images_per_s']:.2f} images/s, {torchvision['gflop_per_image']:.1f} GFLOP per image"]
    for r in rows:
        if r["size"] == torchvision["size"] and r["batch"] == torchvision["batch"]:
            lines.append(f"ssd300 {r['backend']}: {torchvision['step_s'] / r['step_s']:.2f}x torchvision's "
                         f"images/s (best steps {torchvision['best_step_s'] / r['best_step_s']:.2f}x; "
                         f"per CPU second {torchvision['cpu_step_s'] / r['cpu_step_s']:.2f}x)")
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--sizes", default="300,128", type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    parser.add_argument("--jit", choices=("settings", "auto", "on", "off"), default="settings",
                        help="jit_compile: ssd300.speed.fit_settings's (default), Keras's auto, on, off")
    parser.add_argument("--fc6", choices=("auto", "taps", "native"), default="auto",
                        help="fc6's DilatedConv2D method (native: as keras.layers.Conv2D)")
    parser.add_argument("--mixed-precision", choices=("float16", "bfloat16"))
    parser.add_argument("--torchvision", metavar="PYTHON",
                        help="also time torchvision's ssd300_vgg16 at 300x300 in this Python interpreter")
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_backend(args)))
        return 0
    rows = []
    for backend in args.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        command = [sys.executable, os.path.abspath(__file__), "--child", *(argv or sys.argv[1:])]
        print(f"{backend}: load {load_average():.1f}", file=sys.stderr, flush=True)
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            print(f"{backend} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        rows += json.loads(done.stdout.strip().splitlines()[-1])
    print(format_table(rows))
    if args.torchvision:
        print(f"torchvision: load {load_average():.1f}", file=sys.stderr, flush=True)
        torchvision = run_torchvision(args.torchvision, 300, args.batch, args.steps)
        if "error" in torchvision:
            print(f"torchvision failed: {torchvision['error']}", file=sys.stderr)
        else:
            print("\n".join(compare_with_torchvision(rows, torchvision)))
            rows.append(torchvision)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
