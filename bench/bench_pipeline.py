"""Training-pipeline throughput: images/s on one core, and how batch loading scales with workers.

Run: .venv/bin/python bench/bench_pipeline.py [--images N] [--rounds R] [--skip-workers] [--skip-single-core]

Two image sets:

* the real VOC2007 photos of ../shared/data/voc2007_roboflow_coco/valid (JPEGs of about
  500x375 with their COCO boxes), skipped with a message where ../shared is absent;
* 64 synthetic pictures written at 500x375 (always).

For each set, on one core (sched_setaffinity to one CPU, BLAS and OpenMP at one thread, CPU
time of the process):
images/s of ``SamplePipeline.batch`` (reading, augmenting, writing the Caffe input,
``assign_boxes``) with the originals' and the paper's augmentation and without
augmentation, beside the rate of decoding alone (``np.asarray(Image.open(p).convert("RGB"))``),
and their ratios. The rounds interleave the measurements and the best round of each counts,
so that the ratios hold on a shared machine. The NumPy float32 matmul rate (GFLOP/s, one
thread) measured in the same run tells how fast the machine is. Then ``SSDDataset`` batches
(8 images) with 1 and 2 workers, as threads and as processes, as ``model.fit`` loads them,
beside a GIL-free yardstick run by the same pools: on a machine shared with other work, the
yardstick's speedup is what the machine allowed at that moment.
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
    work = {"decode only": lambda chunk, seed: [decode(folder / k) for k in chunk]}
    for label, pipeline in pipelines.items():
        work[label] = (lambda p: lambda chunk, seed: [
            p.batch(chunk[i:i + BATCH], [np.random.default_rng([seed, i + j]) for j in range(BATCH)], True)
            for i in range(0, len(chunk), BATCH)])(pipeline)
    if with_restatement:
        priors = util.priors
        work["restated original (float64)"] = lambda chunk, seed: [
            restated_original(folder / k, gt[k], priors, np.random.default_rng([seed, i]))
            for i, k in enumerate(chunk[:len(chunk) // 4])]
    best = {}
    chunk_size = max(BATCH, len(keys) // rounds // BATCH * BATCH)
    for r in range(rounds):
        chunk = keys[(r * chunk_size) % len(keys):][:chunk_size]
        for label, fn in work.items():
            count = len(chunk) // 4 if label.startswith("restated") else len(chunk)
            best[label] = max(best.get(label, 0.0), count / _timed(lambda: fn(chunk, r)))
    print(f"{name}: one core, 500x375-ish JPEGs -> 300x300 Caffe input + 7308x{util.num_classes + 12} "
          f"target, images/s (ratio to decoding alone):")
    for label, value in best.items():
        print(f"  {label:<28} {value:7.1f}   {value / best['decode only']:.3f}")
    if with_restatement:
        print(f"  original / restatement: {best['original'] / best['restated original (float64)']:.1f}x")
    return best


_SHARED = {}


def _pool_init(dataset):
    _SHARED["ds"] = dataset


def _item(index):
    if index < 0:  # the yardstick: work that never holds the GIL, about one batch's worth
        return _yardstick()
    return len(_SHARED["ds"][index][0])


def _yardstick():
    img = _SHARED.setdefault("yardstick", Image.new("RGB", (1600, 1200), (90, 120, 150)))
    for _ in range(4):
        img.resize((300, 300), Image.BILINEAR)
    return BATCH


def workers_scaling(name, gt, keys, folder, util, augment, cores, repeats=5):
    """Images/s of SSDDataset batches with 1 and 2 workers, threads and processes (wall clock).

    On a shared machine the other processes take their part of the cores, so
    the same pools also run a yardstick that never holds the GIL (Pillow
    resizing), right before or after: its 2-worker speedup is what the machine
    allowed at that moment, and the pipeline's speedup over it is its own
    efficiency. Each figure is the median over ``repeats`` back-to-back pairs.
    """
    ds = SSDDataset(gt, util, folder, keys, (300, 300), batch_size=BATCH, augment=augment)
    _pool_init(ds)
    indices = list(range(len(ds)))
    print(f"{name}, SSDDataset({augment!r}), batches of {BATCH}, {cores} cores, wall clock:")
    for kind in ("threads", "processes"):
        if kind == "threads":
            pools = {w: ThreadPoolExecutor(w) for w in (1, 2)}
        else:
            # As Keras's multiprocessing path: the dataset is sent once per worker,
            # the batches come back through a pipe.
            pools = {w: multiprocessing.get_context("fork").Pool(w, _pool_init, (ds,)) for w in (1, 2)}
        rates = {(job, w): [] for job in ("pipeline", "yardstick") for w in (1, 2)}
        try:
            for pool in pools.values():
                list(pool.map(_item, indices[:2]))
            for r in range(repeats):
                for job, items in (("pipeline", indices), ("yardstick", [-1] * len(indices))):
                    for w in ((1, 2) if r % 2 else (2, 1)):
                        start = time.perf_counter()
                        count = sum(pools[w].map(_item, items))
                        rates[(job, w)].append(count / (time.perf_counter() - start))
        finally:
            for pool in pools.values():
                if kind == "threads":
                    pool.shutdown()
                else:
                    pool.terminate()
        speedup = {job: np.median(np.array(rates[(job, 2)]) / np.array(rates[(job, 1)]))
                   for job in ("pipeline", "yardstick")}
        print(f"  {kind:<9} 1 worker {np.median(rates[('pipeline', 1)]):6.1f} images/s, 2 workers "
              f"{np.median(rates[('pipeline', 2)]):6.1f} images/s: {speedup['pipeline']:.2f}x; GIL-free "
              f"yardstick {speedup['yardstick']:.2f}x; efficiency {speedup['pipeline'] / speedup['yardstick']:.0%}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320, help="real photos to use (of 1004)")
    parser.add_argument("--rounds", type=int, default=5)
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
            name, gt, keys, folder = sets[0]
            keys = keys[:20 * BATCH]
            for augment in ("original", "paper"):
                workers_scaling(name, gt, keys, folder, util, augment, len(all_cores or [0, 0]))


if __name__ == "__main__":
    main()
