"""``python -m ssd300 COMMAND``: the library's command line.

Commands: ``info`` (model summary), ``priors`` (write the prior boxes),
``synth`` (synthetic VOC dataset), ``evaluate`` (VOC mAP), ``detect``
(draw detections on pictures).
"""

import argparse
import json
import os
import sys

import numpy as np

from .atomic import atomic_path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class CommandError(Exception):
    """Reported as ``error: message`` with exit status 2."""


def _classes(classes_file, voc_root=None):
    from .voc import VOC_CLASSES, AnnotationError, read_classes_file

    if not classes_file and voc_root and os.path.isfile(os.path.join(voc_root, "classes.txt")):
        classes_file = os.path.join(voc_root, "classes.txt")
    if not classes_file:
        return VOC_CLASSES
    try:
        return read_classes_file(classes_file)
    except OSError as e:
        raise CommandError(f"{classes_file}: cannot read class list ({e.strerror})") from None
    except AnnotationError as e:
        raise CommandError(str(e)) from None


def _detector(args, classes):
    from .detect import Detector
    from .ssd_v2 import SSD300v2
    from .weights import WeightFileError, load_weights_by_name

    model = SSD300v2((args.input_size, args.input_size, 3), num_classes=len(classes) + 1)
    try:
        report = load_weights_by_name(model, args.weights)
    except WeightFileError as e:
        raise CommandError(str(e)) from None
    if not report.loaded:
        raise CommandError(f"{args.weights}: no layer of the model found in the file")
    if report.missing:
        print(f"warning: {args.weights} lacks {', '.join(report.missing)} (left untrained)",
              file=sys.stderr)
    return Detector(model, classes, confidence_threshold=args.confidence)


def _cmd_info(args):
    from .priors import priors_from_model
    from .ssd_v2 import SSD300

    model = SSD300((args.size, args.size, 3), num_classes=args.num_classes)
    model.summary(line_length=110)
    print(f"parameters: {model.count_params():,}")
    print(f"priors: {len(priors_from_model(model))}")
    return 0


def _cmd_priors(args):
    from .priors import priors_from_model, save_priors
    from .ssd_v2 import SSD300

    priors = priors_from_model(SSD300((args.size, args.size, 3)))
    save_priors(priors, args.out)
    print(f"wrote {len(priors)} priors to {args.out}")
    return 0


def _cmd_synth(args):
    from .synth import make_synthetic_voc

    try:
        out = make_synthetic_voc(args.out, images=args.images, seed=args.seed, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as e:
        raise CommandError(str(e)) from None
    print(f"wrote {args.images} images to {out}")
    return 0


def _cmd_evaluate(args):
    from .evaluation import format_ap_table, write_devkit_results
    from .image_io import ImageError
    from .train import UserError, check_voc_root
    from .voc import AnnotationError, XML_preprocessor, read_split

    try:
        check_voc_root(args.voc_root, args.split)
    except UserError as e:
        raise CommandError(str(e)) from None
    classes = _classes(args.classes, args.voc_root)
    try:
        ids = read_split(args.voc_root, args.split)
        prep = XML_preprocessor(os.path.join(args.voc_root, "Annotations"), classes=classes, ids=ids)
    except AnnotationError as e:
        raise CommandError(str(e)) from None
    detector = _detector(args, classes)
    try:
        by_id, result = detector.evaluate_voc(args.voc_root, prep, args.batch_size,
                                              use_07_metric=not args.voc2010_metric, progress=True)
    except ImageError as e:
        raise CommandError(str(e)) from None
    print(format_ap_table(result, classes))
    files = write_devkit_results(by_id, classes, args.out, prefix=f"comp4_det_{args.split}_")
    print(f"devkit result files: {os.path.dirname(files[0])}/comp4_det_{args.split}_<class>.txt")
    return 0


def _cmd_detect(args):
    from .image_io import ImageError, open_rgb
    from .visualize import draw_detections, save_atomic

    classes = _classes(args.classes)
    detector = _detector(args, classes)
    os.makedirs(args.out, exist_ok=True)
    report, failed = {}, 0
    for path in args.images:
        try:
            image = open_rgb(path)
        except ImageError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        det = detector.detect_arrays([np.asarray(image)])[0]
        det = det[det[:, 1] >= args.min_score]
        stem = os.path.splitext(os.path.basename(path))[0]
        picture = os.path.join(args.out, f"{stem}.png")
        save_atomic(draw_detections(image, det, classes), picture)
        report[path] = [{"label": int(d[0]), "class": classes[int(d[0]) - 1], "score": float(d[1]),
                         "box": [float(v) for v in d[2:6]]} for d in det]
        print(f"{path}: {len(det)} detections -> {picture}")
    with atomic_path(os.path.join(args.out, "detections.json")) as tmp, open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    return 1 if failed else 0


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m ssd300", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="build SSD300, print its summary and number of priors")
    p.add_argument("--size", type=int, default=300, help="input height and width (default 300)")
    p.add_argument("--num-classes", type=int, default=21)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("priors", help="write the model's prior boxes as a pickle")
    p.add_argument("out", nargs="?", default="prior_boxes_ssd300.pkl")
    p.add_argument("--size", type=int, default=300)
    p.set_defaults(func=_cmd_priors)

    p = sub.add_parser("synth", help="write a synthetic VOC-format dataset of shapes")
    p.add_argument("out", help="dataset folder to create")
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p.set_defaults(func=_cmd_synth)

    def model_options(p):
        p.add_argument("--weights", required=True, help="HDF5 weights (by layer name)")
        p.add_argument("--classes", help="classes.txt (default: the dataset's, else the 20 VOC classes)")
        p.add_argument("--input-size", type=int, default=300)
        p.add_argument("--confidence", type=float, default=0.01, help="detection_out confidence threshold")

    p = sub.add_parser("evaluate", help="VOC mAP of a model on a dataset split")
    model_options(p)
    p.add_argument("--voc-root", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--voc2010-metric", action="store_true", help="area under the curve, not 11-point")
    p.add_argument("--out", default="results", help="folder for the devkit result files")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("detect", help="draw detections on pictures")
    model_options(p)
    p.add_argument("images", nargs="+")
    p.add_argument("--out", default="detections")
    p.add_argument("--min-score", type=float, default=0.5, help="draw detections scored at least this")
    p.set_defaults(func=_cmd_detect)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CommandError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
