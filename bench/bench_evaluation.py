"""VOC evaluation speed: 4952 images with 200 detections each, both metrics.

Run: .venv/bin/python bench/bench_evaluation.py
Uses ../shared/data/voc2007_test_ground_truth.json.gz where present, else generated ground truth.
"""

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from ssd300.evaluation import evaluate_detections, load_ground_truth_json  # noqa: E402
from ssd300.voc import VOC_CLASSES  # noqa: E402


def main():
    rng = np.random.default_rng(0)
    gt_file = ROOT.parent / "shared" / "data" / "voc2007_test_ground_truth.json.gz"
    if gt_file.exists():
        ground_truth, sizes = load_ground_truth_json(gt_file, VOC_CLASSES)
        source = "VOC2007 test ground truth"
    else:
        ground_truth, sizes, source = {}, {}, "generated ground truth"
        for i in range(4952):
            n = rng.integers(1, 6)
            xy = rng.uniform(1, 300, (n, 2))
            ground_truth[f"{i:06d}"] = {"boxes": np.concatenate([xy, xy + rng.uniform(20, 150, (n, 2))], 1),
                                        "labels": rng.integers(1, 21, n), "difficult": rng.random(n) < 0.2}
            sizes[f"{i:06d}"] = (500, 375)
    detections = {}
    for image_id, g in ground_truth.items():
        w, h = sizes[image_id]
        n_true = len(g["labels"])
        true = np.concatenate([g["labels"][:, None], rng.uniform(0.3, 1, (n_true, 1)),
                               g["boxes"] + rng.normal(0, 8, (n_true, 4))], axis=1)
        xy = rng.uniform(0, [w, h], (200 - n_true, 2))
        fake = np.concatenate([rng.integers(1, 21, (200 - n_true, 1)), rng.uniform(0, 0.6, (200 - n_true, 1)),
                               xy, xy + rng.uniform(10, 200, (200 - n_true, 2))], axis=1)
        detections[image_id] = np.concatenate([true, fake])
    total = sum(len(d) for d in detections.values())
    print(f"{len(detections)} images, {total} detections ({source})")
    for metric in (True, False):
        t = time.perf_counter()
        result = evaluate_detections(detections, ground_truth, use_07_metric=metric)
        name = "VOC2007 11-point" if metric else "VOC2010 area"
        print(f"  {name:<17} mAP {result['map']:.4f}  {time.perf_counter() - t:6.2f} s")


if __name__ == "__main__":
    main()
