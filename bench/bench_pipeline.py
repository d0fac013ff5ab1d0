"""Training-pipeline throughput: images/s on one core, and how batch loading scales with workers.

Run: .venv/bin/python bench/bench_pipeline.py [--images N] [--rounds R] [--worker-seconds S]
                                              [--skip-workers] [--skip-single-core]

Two image sets:

* the real VOC2007 photos of ../shared/data/voc2007_roboflow_coco/valid (JPEGs of about
  500x375 with their COCO boxes), skipped with a message where ../shared is absent;
* 64 synthetic pictures written at 500x375 (always).

For each set, on one core (sched_setaffinity to one CPU, BLAS and OpenMP at one thread, CPU
time of the process): images/s of ``SamplePipeline.batch`` (reading, augmenting, writing the
Caffe input, ``assign_boxes``) with the originals' and the paper's augmentation and without
augmentation, beside the rate of decoding alone (``np.asarray(Image.open(p).convert("RGB"))``),
and their ratios. Each round runs every kind of work on the same images, one after the other,
and the best round of each counts, so that the ratios hold on a shared machine; each batch is
dropped once made, as a consumer would (keeping them all would add the page faults of fresh
memory to every batch). The NumPy float32 matmul rate (GFLOP/s, one thread) measured in the
same run tells how fast the machine is.

Then ``SSDDataset`` batches (8 images) with 1 and 2 workers, as threads and as processes, as
``model.fit`` loads them: threads hand the batch over as it is, processes pickle it back
through a pipe (``SSDDataset`` sends a ``CompactBatch`` from a worker process). Printed:
images/s (wall clock) and the speedup of 2 workers over 1, over the short rounds that had both
cores to themselves (a GIL-free yardstick run by the same pools right before and after the round
gave 2 workers at least 1.85x one: on a shared machine the other rounds measure the other work),
and for processes the CPU time that receiving costs the training process per batch (CPU time:
it holds on a busy machine).
"""

import argparse
import os
import sys

# One thread for BLAS / OpenMP: the per-core figures, and no oversubscription with workers.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import multiprocessing  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ssd300.generator import SamplePipeline, SSDDataset  # noqa: E402
from ssd300.priors import load_priors  # noqa: E402
from ssd300.ssd_utils import BBoxUtility  # noqa: E402
from ssd300.synth import synthetic_image  # noqa: E402
from tests.reference import assign_boxes_one_at_a_time  # noqa: E402

PHOTOS = ROOT.parent / "shared" / "data" / "voc2007_roboflow_coco" / "valid"
BATCH = 8


def synthetic_set(folder, count=64):
    """``(gt, keys)`` of ``count`` synthetic 500x375 JPEGs written to ``folder``."""
    gt = {}
    for i in range(count):
        img, objects, _ = synthetic_image(np.random.default_rng([1, i]), size_range=(375, 500))
        sx, sy = 500 / img.width, 375 / img.height
        img.resize((500, 375)).save(folder / f"{i}.jpg", quality=90)
        rows = [[(a - 1) * sx / 500, (b - 1) * sy / 375, c * sx / 500, d * sy / 375]
                + list(np.eye(20)[("circle", "square", "triangle", "cross").index(n)])
                for n, a, b, c, d in objects]
        gt[f"{i}.jpg"] = np.array(rows)
    return gt, sorted(gt)


def photo_set(count):
    """``(gt, keys)`` of the first ``count`` real photos, or ``None`` where they are absent."""
    from ssd300.coco import load_coco

    annotations = PHOTOS / "_annotations.coco.json"
    if not annotations.exists():
        print(f"real photos: {PHOTOS} not present (../shared is not beside this checkout); skipped")
        return None
    data = load_coco(annotations).data
    keys = sorted(data)[:count]
    return {k: data[k] for k in keys}, keys


def matmul_gflops(n=1024, repeats=5):
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn):
    # CPU time of this process: on one core with one thread it is the wall
    # time of an idle machine, and other processes' load does not count.
    start = time.process_time()
    fn()
    return time.process_time() - start


def decode(path):
    """Decoding alone: the reference rate."""
    return np.asarray(Image.open(path).convert("RGB"))


def restated_original(path, boxes, priors, rng):
    """The original Generator's per-image work restated (float64 NumPy, one box at a time)."""
    img = decode(path).astype("float64")
    y = boxes.copy()
    h, w = img.shape[:2]
    area = (rng.random() * 0.25 + 0.75) * w * h
    ratio = rng.random() * (4 / 3 - 3 / 4) + 3 / 4
    cw, ch = min(np.round(np.sqrt(area * ratio)), w), min(np.round(np.sqrt(area / ratio)), h)
    x0, y0 = rng.random() * (w - cw), rng.random() * (h - ch)
    img = img[int(y0):int(y0) + int(ch), int(x0):int(x0) + int(cw)]
    new = []
    for box in y:
        cx, cy = 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])
        if x0 / w < cx < (x0 + cw) / w and y0 / h < cy < (y0 + ch) / h:
            box = box.copy()
            box[:4] = [max(0, (box[0] - x0 / w) / (cw / w)), max(0, (box[1] - y0 / h) / (ch / h)),
                       min(1, (box[2] - x0 / w) / (cw / w)), min(1, (box[3] - y0 / h) / (ch / h))]
            new.append(box)
    y = np.asarray(new).reshape(-1, boxes.shape[1])
    img = np.asarray(Image.fromarray(img.astype("uint8")).resize((300, 300))).astype("float64")
    for op in rng.permutation(3):
        alpha = 2 * rng.random() * 0.5 + 0.5
        if op == 0:
            img = np.clip(img * alpha + (1 - alpha) * img.dot([0.299, 0.587, 0.114])[:, :, None], 0, 255)
        elif op == 1:
            img = np.clip(img * alpha, 0, 255)
        else:
            gs = img.dot([0.299, 0.587, 0.114]).mean() * np.ones_like(img)
            img = np.clip(img * alpha + (1 - alpha) * gs, 0, 255)
    cov = np.cov(img.reshape(-1, 3) / 255.0, rowvar=False)
    eigval, eigvec = np.linalg.eigh(cov)
    img = np.clip(img + eigvec.dot(eigval * rng.standard_normal(3) * 0.5) * 255, 0, 255)
    if rng.random() < 0.5:
        img = img[:, ::-1]
        y[:, [0, 2]] = 1 - y[:, [2, 0]]
    if rng.random() < 0.5:
        img = img[::-1]
        y[:, [1, 3]] = 1 - y[:, [3, 1]]
    target = assign_boxes_one_at_a_time(y, priors, 21)
    return img[..., ::-1] - [103.939, 116.779, 123.68], target


def single_core(name, gt, keys, folder, util, rounds, with_restatement):
    """Images/s of each kind of work on one core, best of ``rounds`` interleaved rounds."""
    pipelines = {augment or "no augmentation": SamplePipeline(gt, util, folder, (300, 300), augment)
                 for augment in ("original", "paper", None)}

    def decode_all(seed):
        for k in keys:
            decode(folder / k)

    work = {"decode only": decode_all}
    for label, pipeline in pipelines.items():
        def run(seed, p=pipeline):
            for i in range(0, len(keys), BATCH):
                p.batch(keys[i:i + BATCH], [np.random.default_rng([seed, i + j]) for j in range(BATCH)], True)
        work[label] = run
    restated = keys[:max(1, len(keys) // 4)]
    if with_restatement:
        def run_restated(seed):
            for i, k in enumerate(restated):
                restated_original(folder / k, gt[k], util.priors, np.random.default_rng([seed, i]))
        work["restated original (float64)"] = run_restated
    best = {}
    for r in range(rounds):
        for label, fn in work.items():
            count = len(restated) if label.startswith("restated") else len(keys)
            best[label] = max(best.get(label, 0.0), count / _timed(lambda: fn(r)))
    print(f"{name}: one core, {len(keys)} JPEGs of about 500x375 -> 300x300 Caffe input + "
          f"7308x{util.num_classes + 12} target; images/s, and the ratio to decoding alone:")
    for label, value in best.items():
        print(f"  {label:<28} {value:7.1f}   {value / best['decode only']:.3f}")
    if with_restatement:
        print(f"  original / restatement: {best['original'] / best['restated original (float64)']:.1f}x")
    return best


_SHARED = {}


def _pool_init(dataset):
    _SHARED["ds"] = dataset


def _item(index):
    """Batch ``index`` of the dataset (returned, as Keras's pools return it), or the yardstick."""
    if index < 0:  # the yardstick: work that never holds the GIL, about one batch's worth
        return _yardstick()
    return _SHARED["ds"][index]


def _yardstick():
    img = _SHARED.setdefault("yardstick", Image.new("RGB", (1600, 1200), (90, 120, 150)))
    for _ in range(4):
        img.resize((300, 300), Image.BILINEAR)
    return BATCH


def workers_scaling(name, gt, keys, folder, util, augment, seconds, batches=8):
    """Images/s of SSDDataset batches with 1 and 2 workers, threads and processes (wall clock).

    The batches come back as with ``model.fit``: from threads as they are,
    from processes pickled through the pool's pipe (received by the pool's
    thread in this process, whose CPU time per batch is printed: it holds on
    a busy machine). Short rounds (``batches`` with 1 worker, then with 2)
    run for ``seconds`` per kind; on a machine shared with other work, the
    same pools run a yardstick that never holds the GIL (Pillow resizing)
    right before and right after each round, and a round counts only when
    the yardstick ran 2 workers at least 1.85x one both times, i.e. when
    both cores were free.
    """
    ds = SSDDataset(gt, util, folder, keys, (300, 300), batch_size=BATCH, augment=augment)
    _pool_init(ds)
    batches = min(batches, len(ds))
    starts = range(0, len(ds) - batches + 1, batches)
    print(f"{name}, SSDDataset({augment!r}), rounds of {batches} batches of {BATCH}, wall clock; "
          f"rounds with both cores free (GIL-free yardstick >= 1.85x):")
    for kind in ("threads", "processes"):
        if kind == "threads":
            pools = {w: ThreadPoolExecutor(w) for w in (1, 2)}
        else:
            # As Keras's multiprocessing path: the dataset is in each worker,
            # the batches come back pickled through a pipe.
            pools = {w: multiprocessing.get_context("fork").Pool(w, _pool_init, (ds,)) for w in (1, 2)}

        def rate(w, items):
            start, cpu = time.perf_counter(), time.process_time()
            count = sum(b if isinstance(b, int) else len(b[0]) for b in pools[w].map(_item, items))
            return count / (time.perf_counter() - start), (time.process_time() - cpu) / len(items) * 1e3

        def yardstick():
            return rate(2, [-1] * batches)[0] / rate(1, [-1] * batches)[0]

        rounds, valid = [], []
        try:
            for pool in pools.values():
                list(pool.map(_item, range(2)))
            end = time.time() + seconds
            while time.time() < end:
                first = starts[len(rounds) % len(starts)]
                items = list(range(first, first + batches))
                before = yardstick()
                (one, cpu_one), (two, cpu_two) = rate(1, items), rate(2, items)
                after = yardstick()
                rounds.append((one, two, cpu_one, cpu_two, min(before, after)))
                if min(before, after) >= 1.85:
                    valid.append(rounds[-1])
        finally:
            for pool in pools.values():
                if kind == "threads":
                    pool.shutdown()
                else:
                    pool.terminate()
        every = np.array(rounds)
        if valid:
            a = np.array(valid)
            speedup = a[:, 1] / a[:, 0]
            print(f"  {kind:<9} {len(a)} of {len(every)} rounds: 1 worker {np.median(a[:, 0]):6.1f} images/s, "
                  f"2 workers {np.median(a[:, 1]):6.1f} images/s: {np.median(speedup):.2f}x "
                  f"(quartiles {np.percentile(speedup, 25):.2f}-{np.percentile(speedup, 75):.2f})")
        else:
            print(f"  {kind:<9} no round of {len(every)} had both cores free; over all rounds 2 workers gave "
                  f"{np.median(every[:, 1] / every[:, 0]):.2f}x one, the yardstick {np.median(every[:, 4]):.2f}x")
        if kind == "processes":
            print(f"  {'':<9} CPU time of this process per batch received: {np.median(every[:, 2]):.1f} ms "
                  f"(1 worker), {np.median(every[:, 3]):.1f} ms (2 workers)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320, help="real photos to use (of 1004)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the one-core figures")
    parser.add_argument("--worker-seconds", type=float, default=60,
                        help="seconds of 1- and 2-worker rounds per policy and kind of worker")
    parser.add_argument("--skip-workers", action="store_true")
    parser.add_argument("--skip-single-core", action="store_true")
    args = parser.parse_args()

    util = BBoxUtility(21, load_priors(ROOT / "prior_boxes_ssd300.pkl"))
    all_cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    with tempfile.TemporaryDirectory() as tmp:
        sets = []
        photos = photo_set(args.images)
        if photos is not None:
            sets.append(("real photos", *photos, PHOTOS))
        sets.append(("synthetic", *synthetic_set(Path(tmp)), Path(tmp)))
        if all_cores:
            os.sched_setaffinity(0, {min(all_cores)})
        print(f"NumPy float32 matmul, one thread: {matmul_gflops():.1f} GFLOP/s")
        for name, gt, keys, folder in [] if args.skip_single_core else sets:
            single_core(name, gt, keys, folder, util, args.rounds, with_restatement=name == "synthetic")
        if all_cores:
            os.sched_setaffinity(0, all_cores)
        if not args.skip_workers:
            if len(all_cores or [0, 0]) < 2:
                print("workers: this process has one core; skipped")
                return
            name, gt, keys, folder = sets[0]
            keys = keys[:20 * BATCH]
            for augment in ("original", "paper"):
                workers_scaling(name, gt, keys, folder, util, augment, args.worker_seconds)


if __name__ == "__main__":
    main()
