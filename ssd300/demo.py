"""``ssd300 demo`` (also ``ssd_training.py --demo``): the whole path on generated data, on any machine.

Writes a synthetic VOC-format dataset into a cache folder, trains SSD from
scratch for a fixed number of steps, evaluates it on the dataset's test
split, and draws its detections on test pictures.
"""

import dataclasses
import json
import os

from .atomic import atomic_path
from .errors import UserError
from .synth import make_synthetic_voc
from .detect import Detector
from .evaluation import format_ap_table
from .image_io import open_rgb
from .layout import num_classes_with_background
from .ssd_v2 import SSD300v2
from .training import RECIPES, fit
from .visualize import draw_detections, save_atomic
from .voc import XML_preprocessor, read_split
from .weights import load_weights_by_name

#: The demo's configuration: from scratch on two CPU cores, a small input,
#: Adam at the original recipe's 3e-4 (1e-3 reached half the mAP in the same
#: number of steps) with clipped gradients, the easy ("simple") synthetic
#: style, nothing frozen. The budget is in epochs (steps), not minutes, so a
#: slower machine reaches the same result, later.
DEMO = dataclasses.replace(
    RECIPES["original"], input_size=128, batch_size=8, lr=3e-4, clipnorm=10.0, neg_pos_ratio=3.0,
    augment="original", freeze=(), schedule="constant", epochs=5, val_fraction=0.1, out="runs/demo")
DEMO_IMAGES = 400


def cache_dir():
    """``$SSD300_CACHE``, else ``$XDG_CACHE_HOME/ssd300``, else ``~/.cache/ssd300``."""
    if os.environ.get("SSD300_CACHE"):
        return os.environ["SSD300_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ssd300")


def demo_dataset(images=DEMO_IMAGES, seed=0):
    """The demo's synthetic VOC folder in the cache, written on first use; returns its path."""
    if images < 20:
        raise UserError(f"--demo-images must be at least 20, got {images}")
    root = os.path.join(cache_dir(), f"synth-simple-{images}-seed{seed}")
    if not os.path.isdir(root):
        print(f"writing {images} synthetic pictures to {root}")
        make_synthetic_voc(root, images=images, seed=seed, style="simple")
    return root


def run_demo(config=DEMO, images=DEMO_IMAGES):
    """Train ``config`` on the synthetic set, evaluate on its test split and draw detections.

    Args:
        config: a :class:`ssd300.training.TrainConfig`; its dataset fields
            are replaced by the synthetic set's.
        images: pictures in the synthetic set.

    Returns:
        ``(fit_result, summary)``; ``summary`` is ``None`` when training did
        not finish (see ``fit_result.status``), else the dict written to
        ``demo_summary.json``.
    """
    root = demo_dataset(images, config.seed)
    config = dataclasses.replace(config, voc_root=root, split="trainval", classes=None)
    print(f"demo: {config.epochs} epochs at {config.input_size}x{config.input_size}, batch "
          f"{config.batch_size}")
    result = fit(config)
    # A time limit may stop it before any epoch is saved: then there is nothing to evaluate.
    if result.status not in ("done", "up_to_date", "time_limit") or not result.epochs:
        return result, None
    summary = evaluate_and_draw(config, root)
    summary["epochs"] = result.epochs
    summary["train_loss"] = result.history.get("loss", [])
    summary["val_loss"] = result.history.get("val_loss", [])
    with atomic_path(os.path.join(config.out, "demo_summary.json")) as tmp, open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    return result, summary


def describe(summary, out):
    """The demo's closing line."""
    val = summary["val_loss"]
    losses = (f"validation loss {val[0]:.3f} after epoch 1 -> {min(val):.3f} (best of "
              f"{summary['epochs']} epochs); " if val else "")
    return (f"demo: {losses}test mAP {summary['map']:.3f} (VOC2007 11-point) on "
            f"{summary['test_images']} pictures; curves in {os.path.join(out, 'loss.png')}, "
            f"pictures in {summary['pictures']}")


def evaluate_and_draw(config, root, pictures=6, min_score=0.25):
    """Evaluate ``best.h5`` on the test split and draw detections; returns a summary dict."""
    ids = read_split(root, "test")
    prep = XML_preprocessor(os.path.join(root, "Annotations"), ids=ids)
    model = SSD300v2((config.input_size, config.input_size, 3),
                     num_classes=num_classes_with_background(prep.classes))
    load_weights_by_name(model, os.path.join(config.out, "best.h5"))
    detections, result = Detector(model, prep.classes).evaluate_voc(root, prep)
    print(format_ap_table(result, prep.classes))
    out_dir = os.path.join(config.out, "detections")
    os.makedirs(out_dir, exist_ok=True)
    for image_id in sorted(detections)[:pictures]:
        # A few minutes of training leaves modest scores: draw the best five above min_score.
        picture = open_rgb(os.path.join(root, "JPEGImages", f"{image_id}.jpg"))
        save_atomic(draw_detections(picture, detections[image_id][:5], prep.classes, min_score=min_score),
                    os.path.join(out_dir, f"{image_id}.png"))
    return {"map": result["map"], "ap": {prep.classes[k - 1]: v for k, v in result["ap"].items()},
            "test_images": len(detections), "pictures": out_dir}
