"""Training-pipeline throughput on VOC-sized JPEGs (500x375), on one core.

Run: .venv/bin/python bench/bench_pipeline.py
Prints images/s of SamplePipeline with the originals' and the paper's augmentation, of a
restatement of the original pipeline (one image at a time, float64 NumPy, one-box-at-a-time
assign_boxes), their ratio, and how batch loading scales with workers on this machine.
"""

import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ssd300.generator import SamplePipeline, SSDDataset  # noqa: E402
from ssd300.priors import load_priors  # noqa: E402
from ssd300.ssd_utils import BBoxUtility  # noqa: E402
from ssd300.synth import synthetic_image  # noqa: E402
from tests.reference import assign_boxes_one_at_a_time  # noqa: E402

N_IMAGES = 64


def make_images(folder):
    gt = {}
    for i in range(N_IMAGES):
        img, objects, _ = synthetic_image(np.random.default_rng([1, i]), size_range=(375, 500))
        sx, sy = 500 / img.width, 375 / img.height
        img.resize((500, 375)).save(folder / f"{i}.jpg", quality=90)
        rows = [[(a - 1) * sx / 500, (b - 1) * sy / 375, c * sx / 500, d * sy / 375]
                + list(np.eye(20)[("circle", "square", "triangle", "cross").index(n)])
                for n, a, b, c, d in objects]
        gt[f"{i}.jpg"] = np.array(rows)
    return gt


def original_pipeline(path, boxes, priors, rng):
    """The original Generator's per-image work, restated (Pillow in place of scipy.misc)."""
    img = np.asarray(Image.open(path).convert("RGB")).astype("float64")
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
    gs = img.dot([0.299, 0.587, 0.114])
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


def rate(fn, count):
    fn(0)
    t = time.perf_counter()
    for i in range(count):
        fn(i % N_IMAGES)
    return count / (time.perf_counter() - t)


def load_batch(args):
    ds, index = args
    return ds[index][0].shape[0]


def main():
    priors = load_priors(ROOT / "prior_boxes_ssd300.pkl")
    util = BBoxUtility(21, priors)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        gt = make_images(folder)
        keys = sorted(gt)
        if hasattr(os, "sched_setaffinity"):
            all_cores = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {min(all_cores)})
        results = {}
        for name in ("original", "paper"):
            pipe = SamplePipeline(gt, util, folder, (300, 300), name)
            rngs = [np.random.default_rng(i) for i in range(N_IMAGES)]
            results[name] = rate(lambda i: pipe.load(keys[i], rngs[i]), 192)
        rng = np.random.default_rng(0)
        results["restated original"] = rate(
            lambda i: original_pipeline(folder / keys[i], gt[keys[i]], priors, rng), 48)
        print("one core, 500x375 JPEGs -> (300x300 image, 7308x33 target):")
        for name, value in results.items():
            print(f"  {name:<18} {value:7.1f} images/s")
        print(f"  ratio original / restatement: {results['original'] / results['restated original']:.1f}x")
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, all_cores)
        ds = SSDDataset(gt, util, folder, keys, (300, 300), batch_size=8)
        batches = [(ds, i) for i in range(len(ds))]
        for workers in (1, 2):
            for kind, pool in (("threads", ThreadPoolExecutor), ("processes", ProcessPoolExecutor)):
                with pool(workers) as ex:
                    list(ex.map(load_batch, batches[:2]))
                    t = time.perf_counter()
                    n = sum(ex.map(load_batch, batches * 2))
                    print(f"  SSDDataset batches, {workers} worker {kind:<9}: {n / (time.perf_counter() - t):7.1f} images/s")


if __name__ == "__main__":
    main()
