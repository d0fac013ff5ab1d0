"""``ssd_training.py --demo``: the whole path on generated data, on any machine.

Writes a synthetic VOC-format dataset into a cache folder, trains SSD for a
few minutes, evaluates it on the dataset's test split, and draws its
detections on test pictures.
"""

import csv
import json
import os

from .atomic import atomic_path

# From scratch on two CPU cores: a small input, Adam at the original recipe's
# 3e-4 (1e-3 reached half the mAP in the same time) with clipped gradients,
# the easy ("simple") synthetic style; nothing frozen.
DEMO_DEFAULTS = dict(input_size=128, batch_size=8, optimizer="adam", lr=3e-4, clipnorm=10.0,
                     neg_pos_ratio=3.0, augment="original", freeze="", epochs=1000, val_fraction=0.1)


def cache_dir():
    """``$SSD300_CACHE``, else ``$XDG_CACHE_HOME/ssd300``, else ``~/.cache/ssd300``."""
    if os.environ.get("SSD300_CACHE"):
        return os.environ["SSD300_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ssd300")


def run_demo(args, explicit=()):
    """Run the demo; options in ``explicit`` (set on the command line) are kept."""
    from .synth import make_synthetic_voc
    from .train import train

    root = os.path.join(cache_dir(), f"synth-simple-{args.demo_images}-seed{args.seed}")
    if not os.path.isdir(root):
        print(f"writing {args.demo_images} synthetic pictures to {root}")
        make_synthetic_voc(root, images=args.demo_images, seed=args.seed, style="simple")
    args.voc_root = root
    args.split = "trainval"
    for key, value in DEMO_DEFAULTS.items():
        if key not in explicit:
            setattr(args, key, value)
    if "out" not in explicit:
        args.out = "runs/demo"
    if "time_limit" not in explicit:
        args.time_limit = args.demo_minutes
    args.schedule = "constant"
    print(f"demo: training for up to {args.time_limit:g} minutes at {args.input_size}x{args.input_size}")
    status = train(args)
    if status != 0:
        return status
    summary = evaluate_and_draw(args, root)
    with open(os.path.join(args.out, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    summary["epochs"] = len(rows)
    summary["train_loss"] = [float(r["loss"]) for r in rows]
    summary["val_loss"] = [float(r["val_loss"]) for r in rows]
    with atomic_path(os.path.join(args.out, "demo_summary.json")) as tmp, open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\ndemo: validation loss {summary['val_loss'][0]:.3f} after epoch 1 -> "
          f"{min(summary['val_loss']):.3f} (best of {summary['epochs']} epochs); test mAP "
          f"{summary['map']:.3f} (VOC2007 11-point) on {summary['test_images']} pictures; "
          f"curves in {os.path.join(args.out, 'loss.png')}, pictures in {summary['pictures']}")
    return 0


def evaluate_and_draw(args, root, pictures=6, min_score=0.25):
    """Evaluate ``best.h5`` on the test split and draw detections; returns a summary dict."""
    from .detect import Detector
    from .evaluation import format_ap_table
    from .image_io import open_rgb
    from .ssd_v2 import SSD300v2
    from .visualize import draw_detections, save_atomic
    from .voc import XML_preprocessor, read_split
    from .weights import load_weights_by_name

    ids = read_split(root, "test")
    prep = XML_preprocessor(os.path.join(root, "Annotations"), ids=ids)
    model = SSD300v2((args.input_size, args.input_size, 3), num_classes=prep.num_classes + 1)
    load_weights_by_name(model, os.path.join(args.out, "best.h5"))
    detections, result = Detector(model, prep.classes).evaluate_voc(root, prep)
    print(format_ap_table(result, prep.classes))
    out_dir = os.path.join(args.out, "detections")
    os.makedirs(out_dir, exist_ok=True)
    for image_id in sorted(detections)[:pictures]:
        # A few minutes of training leaves modest scores: draw the best five above min_score.
        picture = open_rgb(os.path.join(root, "JPEGImages", f"{image_id}.jpg"))
        save_atomic(draw_detections(picture, detections[image_id][:5], prep.classes, min_score=min_score),
                    os.path.join(out_dir, f"{image_id}.png"))
    return {"map": result["map"], "ap": {prep.classes[k - 1]: v for k, v in result["ap"].items()},
            "test_images": len(detections), "pictures": out_dir}
