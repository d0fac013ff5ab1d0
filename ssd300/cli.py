"""``ssd300 COMMAND`` (also ``python -m ssd300``): the library's command line; all parsing lives here.

Commands: ``train`` (``python ssd_training.py`` is ``ssd300 train``),
``demo``, ``evaluate`` (VOC mAP; COCO metrics too on COCO datasets),
``detect`` (draw detections), ``export`` (ONNX, SavedModel, LiteRT), ``convert`` (VOC XML <-> COCO JSON), ``info``
(model summary), ``priors`` (write the prior boxes), ``synth`` (a synthetic
VOC-format dataset).

A user's mistake (a missing file, a bad option) is printed as ``error:
message`` with exit status 2 and no traceback.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Keras and TensorFlow take seconds to import: each command imports what it
# needs, so that ``--help`` and the NumPy-only commands start at once.
from .atomic import missing_folders, remove_empty_folders  # noqa: E402
from .errors import UserError  # noqa: E402

RECIPE_HELP = {
    "epochs": "original: 30, paper: 380", "batch_size": "original: 16, paper: 32",
    "optimizer": "original: adam, paper: sgd",
    "lr": "initial learning rate; original: 3e-4, paper: 1e-3",
    "neg_pos_ratio": "hard negatives per positive; original: 2.0, paper: 3.0",
    "augment": "original or paper (the recipe's)",
    "freeze": "comma-separated layers to freeze; original: conv1_1 ... conv3_3, '' for none",
}


def _integer(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _positive_int(text):
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative_int(text):
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _seed(text):
    value = _non_negative_int(text)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"must be below 2**32, got {value}")
    return value


def _number(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _positive_float(text):
    value = _number(text)
    if not 0 < value < float("inf"):  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _input_size(text):
    value = _positive_int(text)
    if value < 32:
        raise argparse.ArgumentTypeError(f"must be at least 32 (SSD300's five poolings), got {value}")
    return value


def _num_classes(text):
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (the classes counting the background), got {value}")
    return value


def _fraction(text):
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def add_training_options(p, dataset=True):
    """The options of ``train`` (and, without the dataset ones, ``demo``).

    Every option defaults to "not given" (``argparse.SUPPRESS``), so the
    recipe fills what the user did not set.
    """
    given = argparse.SUPPRESS
    if dataset:
        p.add_argument("--voc-root", default=given,
                       help="VOC dataset folder (default: VOCdevkit/VOC2007); a COCO/Roboflow export "
                            "folder is recognised too")
        p.add_argument("--coco-json", default=given,
                       help="train on a COCO JSON file (with --images), or a COCO dataset folder "
                            "(Roboflow export: train/ valid/ test/, each with _annotations.coco.json)")
        p.add_argument("--images", default=given,
                       help="the image folder of --coco-json (default: the JSON file's folder)")
        p.add_argument("--classes", type=_class_list, default=given,
                       help="classes.txt fixing the class order (default: the dataset's classes.txt, "
                            "the COCO categories with boxes in id order, else the 20 VOC classes)")
        p.add_argument("--split", default=given,
                       help="ImageSets/Main list to train on, or 'all' for every annotation file as the "
                            "originals did (with --val-fraction 0.3 for their 70/30 split) "
                            "(default: trainval)")
        p.add_argument("--val-fraction", type=_fraction, default=given,
                       help="part of the training list held out for validation (default: 0.1)")
        p.add_argument("--skip-difficult", action="store_true", default=given,
                       help="leave difficult objects out of training")
        p.add_argument("--skip-bad-annotations", action="store_true", default=given,
                       help="warn and skip bad objects in the annotations instead of stopping")
    if dataset:
        p.add_argument("--recipe", choices=("original", "paper"), default=given,
                       help="defaults for the options below (default: original)")
    p.add_argument("--epochs", type=_positive_int, default=given, help=RECIPE_HELP["epochs"])
    p.add_argument("--batch-size", type=_positive_int, default=given, help=RECIPE_HELP["batch_size"])
    p.add_argument("--optimizer", choices=("adam", "sgd"), default=given, help=RECIPE_HELP["optimizer"])
    p.add_argument("--lr", type=_positive_float, default=given, help=RECIPE_HELP["lr"])
    p.add_argument("--clipnorm", type=_positive_float, default=given,
                   help="clip each gradient to this norm (default: no clipping)")
    p.add_argument("--neg-pos-ratio", type=_positive_float, default=given, help=RECIPE_HELP["neg_pos_ratio"])
    p.add_argument("--augment", choices=("original", "paper", "none"), default=given, help=RECIPE_HELP["augment"])
    p.add_argument("--weights", default=given,
                   help="initial weights: an HDF5 file (by layer name) or 'vgg16' (ImageNet)")
    p.add_argument("--freeze", default=given, help=RECIPE_HELP["freeze"])
    p.add_argument("--input-size", type=_positive_int, default=given,
                   help="input height and width (default: 300)")
    p.add_argument("--workers", type=_positive_int, default=given, help="data-loading threads (default: 2)")
    p.add_argument("--multiprocessing", action="store_true", default=given,
                   help="load data in processes, not threads: 2 processes load ~1.8-1.9x one, "
                        "2 threads ~1.5x (the GIL), though one process is slower than one thread")
    p.add_argument("--mixed-precision", choices=("off", "float16", "bfloat16"), default=given,
                   help="mixed-precision policy (default: off)")
    p.add_argument("--out", default=given, help="output folder (default: runs/ssd300)")
    p.add_argument("--resume", action="store_true", default=given, help="continue from OUT/checkpoint.npz")
    p.add_argument("--tensorboard", action="store_true", default=given, help="also write TensorBoard logs")
    p.add_argument("--steps-per-epoch", type=_positive_int, default=given, help="limit the batches per epoch")
    p.add_argument("--time-limit", type=_positive_float, default=given,
                   help="stop after this many minutes (at the end of a batch)")
    p.add_argument("--seed", type=_seed, default=given, help="0 ... 2**32 - 1 (default: 0)")
    p.add_argument("--skip-bad-images", action="store_true", default=given,
                   help="warn and skip unreadable images")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=given,
                   help="no progress bar (one line per epoch)")
    if not dataset:
        return  # the demo generates its dataset: one process
    p.add_argument("--distribute", choices=("data-parallel",), default=given,
                   help="train on every GPU (every device): keras.distribution.DataParallel over every "
                        "process on JAX, tf.distribute.MirroredStrategy in one process on TensorFlow. "
                        "--batch-size is then the global batch, "
                        "split evenly over the devices (a multiple of their number); each process loads "
                        "its share. Not on PyTorch: Keras 3.15 has no distribution for it")
    p.add_argument("--coordinator", default=given,
                   help="with several processes (JAX): HOST:PORT of process 0 (default: $SSD300_COORDINATOR, "
                        "$KERAS_DISTRIBUTION_JOB_ADDRESSES, or SLURM's first node)")
    p.add_argument("--num-processes", type=_positive_int, default=given,
                   help="processes of the run (default: $SSD300_NUM_PROCESSES, "
                        "$KERAS_DISTRIBUTION_NUM_PROCESSES, $SLURM_NTASKS, else 1)")
    p.add_argument("--process-id", type=int, default=given,
                   help="this process's index, 0 writes the outputs (default: $SSD300_PROCESS_ID, "
                        "$KERAS_DISTRIBUTION_PROCESS_ID, $SLURM_PROCID, $JOB_COMPLETION_INDEX, else 0)")
    p.add_argument("--distribute-timeout", type=_positive_float, default=given,
                   help="seconds to wait for every process to join, and after which a silent process "
                        "counts as dead and the others stop (default: 120)")


# Command-line spellings that differ from the configuration's values.
_CONVERT = {
    "augment": lambda v: None if v == "none" else v,
    "mixed_precision": lambda v: None if v == "off" else v,
    "freeze": lambda v: tuple(name for name in v.split(",") if name),
}
_NOT_CONFIG = {"command", "func", "recipe", "demo", "demo_images", "demo_minutes", "demo_pictures"}


def training_config(args, base=None):
    """A :class:`ssd300.training.TrainConfig`: ``base`` (else the recipe) with the options given."""
    from .training import recipe

    given = {k: _CONVERT.get(k, lambda v: v)(v) for k, v in vars(args).items() if k not in _NOT_CONFIG}
    return (recipe(getattr(args, "recipe", "original"), **given) if base is None
            else dataclasses.replace(base, **given))


def _exit_status(result):
    stream = sys.stdout if result.status in ("done", "up_to_date", "time_limit") else sys.stderr
    prefix = "error: " if result.status == "nan" else ""
    print(f"{prefix}{result.message}", file=stream)
    return {"done": 0, "up_to_date": 0, "time_limit": 0, "nan": 1, "interrupted": 130}[result.status]


#: The input size when ``--input-size`` is not given: TrainConfig's and the demo's
#: (known here before Keras is imported; tests/test_bench_tools.py checks them).
DEFAULT_INPUT_SIZE = {"train": 300, "demo": 128}


def _choose_cpu_kernels(args, command):
    """Before Keras and TensorFlow are imported: the fastest CPU kernels for this input size."""
    from .speed import choose_tensorflow_cpu_kernels

    note = choose_tensorflow_cpu_kernels(getattr(args, "input_size", DEFAULT_INPUT_SIZE[command]))
    if note:
        print(note)


#: The options of ``train`` that choose the data or the recipe: ``--demo`` has its own.
_NOT_FOR_THE_DEMO = ("voc_root", "coco_json", "images", "classes", "split", "val_fraction", "skip_difficult",
                     "skip_bad_annotations", "recipe", "distribute", "coordinator", "num_processes",
                     "process_id")


def _option(name):
    return "--" + name.replace("_", "-")


def _cmd_train(args):
    if getattr(args, "demo", False):
        given = [_option(k) for k in _NOT_FOR_THE_DEMO if k in vars(args)]
        if given:
            raise UserError(f"--demo trains its own recipe on its generated dataset; "
                            f"{', '.join(given)} would be ignored (train without --demo to use them)")
        return _cmd_demo(args)
    given = [_option(k) for k in ("demo_images", "demo_minutes") if getattr(args, k, None) is not None]
    if given:
        raise UserError(f"{', '.join(given)} {'apply' if len(given) > 1 else 'applies'} to --demo only")
    _choose_cpu_kernels(args, "train")
    from .training import fit

    return _exit_status(fit(training_config(args)))


def _cmd_demo(args):
    _choose_cpu_kernels(args, "demo")
    from .demo import DEMO, DEMO_IMAGES, describe, run_demo

    config = training_config(args, base=DEMO)
    if getattr(args, "demo_minutes", None) and "time_limit" not in vars(args):
        config = dataclasses.replace(config, time_limit=args.demo_minutes)
    images = getattr(args, "demo_images", None) or getattr(args, "demo_pictures", None) or DEMO_IMAGES
    result, summary = run_demo(config, images=images)
    if summary is None:
        return _exit_status(result)
    print("\n" + describe(summary, config.out))
    return 0


def _class_list(path):
    """``--classes FILE``: the names, one per line."""
    from .voc import read_classes_file

    try:
        return read_classes_file(path)
    except OSError as e:
        raise argparse.ArgumentTypeError(f"{path}: cannot read class list ({e.strerror})") from None
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _class_file(classes_file, voc_root=None, weights=None):
    """``--classes FILE``, else ``classes.txt`` beside the weights (training writes it), else the
    dataset's; ``None`` when there is none."""
    if classes_file:
        return classes_file
    for folder in (os.path.dirname(os.path.abspath(weights)) if weights else None, voc_root):
        if folder and os.path.isfile(os.path.join(folder, "classes.txt")):
            return os.path.join(folder, "classes.txt")
    return None


def _classes(classes_file, voc_root=None, weights=None):
    """The names in :func:`_class_file`'s file, else the 20 VOC classes."""
    from .voc import VOC_CLASSES, read_classes_file

    path = _class_file(classes_file, voc_root, weights)
    if path is None:
        return VOC_CLASSES
    try:
        return read_classes_file(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read class list ({e.strerror})") from None


def _model(args, classes, classes_given=True):
    """SSD300 for ``classes`` at ``--input-size`` with ``--weights`` loaded by layer name.

    The class heads must come from the file: weights for another class count
    are an error that says what the file holds, not a model with untrained heads.
    ``classes_given`` is false when ``classes`` are the 20 VOC classes assumed
    for want of a class list, which the message then says.
    """
    from .ssd_v2 import SSD300v2
    from .weights import (WeightFileError, check_class_count, load_weights_by_name, num_classes_in_file,
                          read_weight_file)

    layers = read_weight_file(args.weights)
    export = args.command == "export"
    requested = getattr(args, "num_classes", None)
    held = num_classes_in_file(layers, args.weights) if requested or not classes_given else None
    if held is not None and held != (requested or len(classes) + 1):
        given = (f"--num-classes {requested} was given" if requested else
                 "no class list was given (--classes FILE, or classes.txt beside the weights), so the "
                 "20 VOC classes were assumed")
        raise WeightFileError(f"{args.weights} holds class heads for {held - 1} classes + background, but "
                              f"{given}; pass --classes FILE with {held - 1} names, in the order the model "
                              f"was trained with" + (f" (or --num-classes {held})" if export else ""))
    num_classes = check_class_count(layers, classes, name=args.weights, num_classes_option=export)
    model = SSD300v2((args.input_size, args.input_size, 3), num_classes=num_classes)
    report = load_weights_by_name(model, layers)
    problems = [f"lacks {', '.join(report.missing)} of the model"] if report.missing else []
    problems += [f"{name}: {why}" for name, why in report.skipped.items()]
    if problems:
        raise UserError(f"{args.weights}: {'; '.join(problems)}")
    return model


@contextlib.contextmanager
def _output_folder(path):
    """Create the output folder ``path`` for the block, checked writable; afterwards remove the
    folders it created that are still empty (every input failed, or the block failed)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{path}: cannot create the output folder: a file of that name exists")
    created = missing_folders(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        remove_empty_folders(created)
        raise UserError(f"{path}: cannot create the output folder ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        remove_empty_folders(created)
        raise UserError(f"{path}: the output folder is not writable")
    try:
        yield path
    finally:
        remove_empty_folders(created)


#: ``--input-size`` and ``--confidence`` when not given (with ``--weights``).
MODEL_DEFAULTS = {"input_size": 300, "confidence": 0.01}


def _model_source(args, command):
    """Exactly one of ``--weights`` / ``--model``; fills ``--input-size`` and ``--confidence`` for
    ``--weights``, and refuses them with ``--model``, whose file fixed both at export."""
    model = getattr(args, "model", None)
    if bool(args.weights) == bool(model):
        raise UserError(f"{command} needs --weights FILE.h5 or --model FILE.onnx (one of them)")
    given = [f"--{name.replace('_', '-')}" for name in MODEL_DEFAULTS if getattr(args, name) is not None]
    if model and given:
        raise UserError(f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to --weights; "
                        f"{model} keeps the input size and confidence threshold it was exported with "
                        f"(ssd300 export --input-size N --confidence X sets them)")
    for name, default in MODEL_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)


def _detector(args, classes, classes_given=True):
    """The Keras detector of ``--weights``."""
    from .detect import Detector

    return Detector(_model(args, classes, classes_given), classes, confidence_threshold=args.confidence)


def _onnx_detector(args, dataset_classes=None):
    """onnxruntime's detector of ``--model FILE.onnx`` (no Keras), labelled with the model's classes.

    The names: ``--classes`` or ``classes.txt`` beside the model (of the
    length the model records), else the names the file records, else
    ``dataset_classes`` (a dataset's ``classes.txt``, when evaluating), else
    the 20 VOC classes for a 21-class model; anything else is refused.
    """
    from .onnx_runtime import OnnxDetector
    from .voc import VOC_CLASSES

    class_file = _class_file(args.classes, weights=args.model)
    detector = OnnxDetector(args.model)
    known = detector.num_classes
    if class_file is not None:
        detector.set_classes(_classes(class_file))
    elif detector.class_names is None and dataset_classes is not None:
        detector.set_classes(_classes(dataset_classes))
    elif detector.class_names is None and known == len(VOC_CLASSES) + 1:
        detector.set_classes(VOC_CLASSES)
    elif detector.class_names is None:
        what = (f"detects {known - 1} classes + background but records no class names" if known else
                "records neither its class count nor its class names (exported before ssd300 recorded them)")
        count = f"{known - 1} names" if known else "the model's class names"
        raise UserError(f"{args.model} {what}; pass --classes FILE with {count}, in the order the model was "
                        f"trained with (or put classes.txt beside the model)")
    return detector


def _cmd_export(args):
    import numpy as np

    from .export import check_export, export_detector
    from .image_io import load_image, resize
    from .inference import inference_model

    if args.num_classes and args.classes:
        raise UserError("give --num-classes or --classes, not both")
    _model_source(args, "export")
    # The --check pictures are read first: a bad one stops the command before the export.
    images = (np.stack([resize(load_image(p), (args.input_size, args.input_size)) for p in args.check])
              if args.check else None)
    class_file = None if args.num_classes else _class_file(args.classes, weights=args.weights)
    classes = (tuple(f"class{i}" for i in range(1, args.num_classes)) if args.num_classes
               else _classes(args.classes, weights=args.weights))
    model = _model(args, classes, classes_given=class_file is not None)
    options = dict(confidence_threshold=args.confidence, nms_thresh=args.nms_thresh, top_k=args.top_k,
                   keep_top_k=args.keep_top_k)
    # Only names from a file are recorded; the model's class count is recorded always (ONNX).
    path = export_detector(model, args.out, args.format, classes=classes if class_file else None, **options)
    print(f"wrote {path} ({args.format}): uint8 RGB images (batch, {args.input_size}, {args.input_size}, 3) "
          "in; boxes (batch, K, 4) normalised xmin, ymin, xmax, ymax, scores (batch, K), classes "
          "(batch, K) (1 .. C, -1 for padding) and num_detections (batch,) out")
    if images is not None:
        check_export(args.out, args.format, images, inference_model(model, **options))
        print(f"checked on {len(args.check)} pictures: the same detections as the Keras model")
    if args.format == "onnx":
        names = f"the class names of {class_file}" if class_file else "no class names"
        # Without recorded names, detect takes VOC's for 21 classes and needs --classes otherwise.
        option = "" if class_file or len(classes) == 20 else " --classes CLASSES.txt"
        print(f"{path} records {len(classes)} classes + background and {names}; run it without Keras: "
              f"ssd300 detect --model {args.out}{option} PICTURES")
    return 0


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
        raise UserError(str(e)) from None
    print(f"wrote {args.images} images to {out}")
    return 0


def _cmd_evaluate(args):
    _model_source(args, "evaluate")
    if args.coco_json:
        return _evaluate_coco(args)
    args.split = args.split or "test"
    if not args.voc_root:
        raise UserError("evaluate needs --voc-root or --coco-json")
    from .datasets import read_voc
    from .evaluation import format_ap_table, write_devkit_results

    if args.model:
        detector = _onnx_detector(args, dataset_classes=_class_file(None, args.voc_root))
        classes = detector.classes
    else:
        class_file = _class_file(args.classes, args.voc_root, args.weights)
        classes = _classes(args.classes, args.voc_root, args.weights)
    dataset = read_voc(args.voc_root, args.split, classes)
    with _output_folder(args.out):  # checked before the weights are read and the detector runs
        if not args.model:
            detector = _detector(args, classes, classes_given=class_file is not None)
        by_id, result = detector.evaluate_voc(args.voc_root, dataset, args.batch_size,
                                              use_07_metric=not args.voc2010_metric, progress=True)
        print(format_ap_table(result, classes))
        files = write_devkit_results(by_id, classes, args.out, prefix=f"comp4_det_{args.split}_")
    print(f"devkit result files: {os.path.dirname(files[0])}/comp4_det_{args.split}_<class>.txt")
    return 0


def _evaluate_coco(args):
    from .coco import load_coco
    from .coco_eval import evaluate_dataset, format_coco_table
    from .datasets import coco_source
    from .evaluation import format_ap_table

    if args.split is not None and os.path.isfile(args.coco_json):
        raise UserError(f"{args.coco_json} is a COCO JSON file, which has no splits: --split {args.split} is "
                        f"only for a dataset folder")
    annotation_file, images = coco_source(args.coco_json, args.images, args.split or "test")
    if args.model:
        detector = _onnx_detector(args)
        classes = detector.classes
    else:
        # Without a class list, the dataset's categories with boxes.
        classes = _classes(args.classes, weights=args.weights) \
            if _class_file(args.classes, weights=args.weights) else None
    dataset = load_coco(annotation_file, images, classes=classes, evaluation=True)
    results = args.results_json or os.path.join(args.out, "detections.coco.json")
    with _output_folder(os.path.dirname(results) or "."):
        if not args.model:
            detector = _detector(args, dataset.classes)
        _, voc, coco = evaluate_dataset(detector, dataset, batch_size=args.batch_size,
                                        use_07_metric=not args.voc2010_metric, results_json=results,
                                        progress=True)
    print(format_ap_table(voc, dataset.classes))
    print("\nCOCO metrics (pycocotools):")
    print(format_coco_table(coco))
    print(f"COCO results JSON: {results}")
    return 0


def _cmd_convert(args):
    from .convert import coco_root_to_voc, coco_to_voc, voc_to_coco

    classes = _classes(args.classes) if args.classes else None
    if args.direction == "voc2coco":
        counts = voc_to_coco(args.source, args.out, classes=classes, split=args.split)
    elif os.path.isdir(args.source):
        counts = coco_root_to_voc(args.source, args.out, classes=classes, link=args.link)
    else:
        counts = coco_to_voc(args.source, args.images or os.path.dirname(os.path.abspath(args.source)),
                             args.out, classes=classes, split=args.split or "train", link=args.link)
    print(f"wrote {args.out}: {counts}")
    return 0


def _unique_names(stems, reserved=()):
    """Output names for input stems, unique in command-line order: the first ``1`` stays ``1``, the
    next ``1_2``, ``1_3``, ... (case-insensitively, for file systems that ignore case), none of them
    in ``reserved``."""
    names, taken = [], {name.casefold() for name in reserved}
    for stem in stems:
        name, n = stem, 1
        while name.casefold() in taken:
            n += 1
            name = f"{stem}_{n}"
        taken.add(name.casefold())
        names.append(name)
    return names


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def _inputs_in(folder, inputs, extensions):
    """The stems of the ``inputs`` that lie in ``folder`` with one of ``extensions``: the names an
    output there must not take, or it would overwrite an input."""
    if not os.path.isdir(folder):
        return set()
    return {_stem(p) for p in inputs if os.path.splitext(p)[1].lower() in extensions
            and os.path.isdir(os.path.dirname(p) or ".")
            and os.path.samefile(os.path.dirname(p) or ".", folder)}


def _folder_inputs(inputs):
    """``inputs`` with each folder replaced by its pictures and videos (by extension, in name order,
    not its sub-folders or hidden files); ``(paths, empty_folders)``."""
    from .image_io import picture_extensions
    from .video import VIDEO_EXTENSIONS

    known = picture_extensions() | VIDEO_EXTENSIONS
    paths, empty = [], []
    for path in inputs:
        if not os.path.isdir(path):
            paths.append(path)
            continue
        found = sorted(e.path for e in os.scandir(path) if e.is_file() and not e.name.startswith(".")
                       and os.path.splitext(e.name)[1].lower() in known)
        paths.extend(found)
        if not found:
            empty.append(path)
    return paths, empty


def _cmd_detect(args):
    from .atomic import atomic_path, writing
    from .image_io import ImageError, open_rgb
    from .video import VideoReadError, VideoWriteError, detect_video, is_video_path
    from .visualize import draw_detections, save_atomic

    if not args.images and args.camera is None:
        raise UserError("detect needs pictures or videos, or --camera N")
    _model_source(args, "detect")
    inputs, empty = _folder_inputs(args.images)
    for folder in empty:
        print(f"error: {folder}: no pictures or videos in this folder", file=sys.stderr)
    if not inputs and args.camera is None:
        return 1
    videos = ([args.camera] if args.camera is not None else []) + [p for p in inputs if is_video_path(p)]
    pictures = [p for p in inputs if not is_video_path(p)]
    # Inputs sharing a name (a/1.jpg and b/1.jpg, 1.jpg and 1.png) get 1.png and 1_2.png.
    # Outputs never take the name of an input in the output folder (--out the pictures' own folder).
    video_names = _unique_names([f"camera{s}" if isinstance(s, int) else _stem(s) for s in videos],
                                reserved=_inputs_in(args.out, inputs, {".mp4", ".jsonl"}))
    picture_names = _unique_names([_stem(p) for p in pictures], reserved=_inputs_in(args.out, inputs, {".png"}))
    video_options = dict(every=args.every, show=args.show, min_score=args.min_score,
                         start_frame=args.start_frame, max_frames=args.max_frames)
    with _output_folder(args.out):  # removed again if nothing is written in it
        if args.model:
            detector = _onnx_detector(args)
        else:
            class_file = _class_file(args.classes, weights=args.weights)
            detector = _detector(args, _classes(args.classes, weights=args.weights), class_file is not None)
        classes = detector.classes
        failed = len(empty)
        # Every picture is detected before anything is written: a model whose class count is unknown
        # stops here on a label past the class list, with nothing half-written. The pictures go
        # through the model in batches; only their detections are kept.
        found = {}
        per_call = args.batch_size or 8
        for start in range(0, len(pictures), per_call):
            read = {}
            for path in pictures[start:start + per_call]:
                try:
                    read[path] = open_rgb(path)
                except ImageError as e:
                    print(f"error: {e}", file=sys.stderr)
                    failed += 1
            for path, det in zip(read, detector.detect_arrays(list(read.values()))):
                found[path] = det[det[:, 1] >= args.min_score]
        for source, name in zip(videos, video_names):
            out_video, out_jsonl = (os.path.join(args.out, f"{name}{ext}") for ext in (".mp4", ".jsonl"))
            batch = args.batch_size or (1 if isinstance(source, int) else 8)
            try:
                result = detect_video(detector, source, out_video, out_jsonl, batch_size=batch, **video_options)
            except (VideoReadError, VideoWriteError) as e:  # skipped like an unreadable picture
                print(f"error: {e}", file=sys.stderr)
                failed += 1
                continue
            stopped = " (interrupted; outputs kept)" if result.interrupted else ""
            print(f"{source}: {result.frames} frames, detector on {result.processed} -> {out_video}, "
                  f"{out_jsonl}{stopped}")
            if result.interrupted == "ctrl-c":  # q in the window only ends that video
                raise KeyboardInterrupt
        report = {}
        for path, name in zip(pictures, picture_names):
            if path not in found:
                continue
            try:
                image = open_rgb(path)  # again: holding every picture would take their whole size in memory
            except ImageError as e:
                print(f"error: {e}", file=sys.stderr)
                failed += 1
                continue
            det = found[path]
            picture = os.path.join(args.out, f"{name}.png")
            save_atomic(draw_detections(image, det, classes), picture)
            report[path] = [{"label": int(d[0]), "class": classes[int(d[0]) - 1], "score": float(d[1]),
                             "box": [float(v) for v in d[2:6]]} for d in det]
            print(f"{path}: {len(det)} detections -> {picture}")
        if report:
            path = os.path.join(args.out, "detections.json")
            with writing(path), atomic_path(path) as tmp, open(tmp, "w") as f:
                json.dump(report, f, indent=2)
    return 1 if failed else 0


def build_parser(prog="ssd300", train_prog=None):
    """The ``ssd300`` parser; ``train_prog``: the ``train`` command's own name in its usage
    (``ssd_training.py``, which runs ``train`` alone)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train SSD300 on a VOC-format dataset (= python ssd_training.py)",
                       description=_training_description(), formatter_class=argparse.RawDescriptionHelpFormatter,
                       **({"prog": train_prog} if train_prog else {}))
    add_training_options(p)
    p.add_argument("--demo", action="store_true", help="run the demo instead (= ssd300 demo)")
    p.add_argument("--demo-images", type=_positive_int, help="synthetic images for --demo (default: 400)")
    p.add_argument("--demo-minutes", type=_positive_float,
                   help="an upper bound on the demo's training time (default: none; it trains a fixed "
                        "number of epochs)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("demo", help="generate a synthetic dataset, train on it, evaluate, draw detections")
    p.add_argument("--images", dest="demo_pictures", type=_positive_int, default=400,
                   help="synthetic pictures (default: 400)")
    add_training_options(p, dataset=False)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("info", help="build SSD300, print its summary and number of priors")
    p.add_argument("--size", type=_input_size, default=300, help="input height and width (default 300)")
    p.add_argument("--num-classes", type=_num_classes, default=21, help="classes with the background (default 21)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("priors", help="write the model's prior boxes as a pickle")
    p.add_argument("out", nargs="?", default="prior_boxes_ssd300.pkl")
    p.add_argument("--size", type=_input_size, default=300, help="input height and width (default 300)")
    p.set_defaults(func=_cmd_priors)

    p = sub.add_parser("synth", help="write a synthetic VOC-format dataset of shapes")
    p.add_argument("out", help="dataset folder to create")
    p.add_argument("--images", type=_positive_int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p.set_defaults(func=_cmd_synth)

    def model_options(p, required=True):
        p.add_argument("--weights", required=required, help="HDF5 weights (by layer name)")
        p.add_argument("--classes", help="classes.txt (default: the one beside --weights, which training "
                                          "writes, else the dataset's, else the 20 VOC classes)")
        p.add_argument("--input-size", type=_input_size,
                       help=f"the model's input height and width (default {MODEL_DEFAULTS['input_size']})")
        p.add_argument("--confidence", type=_fraction,
                       help=f"detection_out confidence threshold (default {MODEL_DEFAULTS['confidence']})")

    p = sub.add_parser("evaluate", help="VOC mAP (and COCO metrics for COCO datasets) of a model")
    model_options(p, required=False)
    p.add_argument("--model", help="an exported .onnx detector, run with onnxruntime instead of --weights "
                                   "(classes from --classes or classes.txt beside it, else the names the "
                                   "file records, else the dataset's classes.txt, else the 20 VOC classes "
                                   "for a 21-class model)")
    p.add_argument("--voc-root", help="a VOC folder")
    p.add_argument("--coco-json", help="a COCO JSON file (with --images), or a COCO/Roboflow dataset folder")
    p.add_argument("--images", help="the image folder of --coco-json (default: the JSON file's folder)")
    p.add_argument("--results-json", help="COCO results file to write (default: OUT/detections.coco.json)")
    p.add_argument("--split", help="(default: test; a Roboflow folder has train/valid/test; not for a COCO JSON file)")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--voc2010-metric", action="store_true", help="area under the curve, not 11-point")
    p.add_argument("--out", default="results", help="folder for the devkit result files")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("convert", help="convert a dataset between VOC XML and COCO JSON")
    p.add_argument("direction", choices=("voc2coco", "coco2voc"))
    p.add_argument("source", help="voc2coco: a VOC folder; coco2voc: a COCO JSON file or a Roboflow folder")
    p.add_argument("out", help="voc2coco: the JSON file to write; coco2voc: the VOC folder to create")
    p.add_argument("--images", help="coco2voc: the image folder of the JSON file (default: its folder)")
    p.add_argument("--split", help="voc2coco: an ImageSets/Main list (default: every annotation); "
                                   "coco2voc: the split list to write (default: train)")
    p.add_argument("--classes", help="classes.txt fixing the class order")
    p.add_argument("--link", choices=("hardlink", "copy", "symlink"), default="hardlink",
                   help="coco2voc: how images go into JPEGImages (default: hardlink, else copy)")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("export", help="write the whole detector (preprocessing, network, NMS) as ONNX, "
                                      "a TensorFlow SavedModel or LiteRT",
                       description="Write the detector (uint8 RGB in; Caffe preprocessing, SSD300, box decoding and "
                       "per-class NMS inside; fixed-size boxes, scores, classes and num_detections out), "
                       "with a dynamic batch size. Every format exports from the TensorFlow backend "
                       "(KERAS_BACKEND=tensorflow, the default); Keras 3.15 cannot export this model's "
                       "NMS loop from JAX or PyTorch. The weights do not depend on the backend.")
    model_options(p)
    p.add_argument("--num-classes", type=_num_classes,
                   help="classes with the background, instead of --classes (the ONNX file then records no names)")
    p.add_argument("--format", required=True, choices=("onnx", "tf_saved_model", "litert"))
    p.add_argument("--out", required=True, help="a .onnx / .tflite file, or the SavedModel folder")
    p.add_argument("--nms-thresh", type=_fraction, default=0.45)
    p.add_argument("--top-k", type=_positive_int, default=400, help="detections kept per class by NMS")
    p.add_argument("--keep-top-k", type=_positive_int, default=200, help="detections kept per image")
    p.add_argument("--check", nargs="+", metavar="PICTURE",
                   help="run the exported file with its own runtime on these pictures and compare it "
                        "with the Keras model")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("detect", help="draw detections on pictures, videos or a camera",
                       description="Pictures give OUT/<name>.png and OUT/detections.json (boxes in pixels, "
                                   "keyed by the picture's path). "
                                   "Videos (and --camera N) give OUT/<name>.mp4, the annotated video at the "
                                   "input's size and frame rate (MPEG-4 Part 2 'mp4v', what pip's OpenCV "
                                   "writes), and OUT/<name>.jsonl, one line per processed frame: frame number, "
                                   "time stamp, boxes in pixels, labels, scores. <name> is the input's file name "
                                   "without its extension; inputs that share one get <name>_2, <name>_3, ... in "
                                   "command-line order (each output is printed). Unreadable pictures and "
                                   "videos are reported and skipped (exit status 1). Videos need the video "
                                   "extra: pip install 'ssd300[video]'.")
    model_options(p, required=False)
    p.add_argument("--model", help="an exported .onnx detector, run with onnxruntime instead of --weights "
                                   "(no Keras needed; classes from --classes or classes.txt beside it, else "
                                   "the names the file records, else the 20 VOC classes for a 21-class model)")
    p.add_argument("images", nargs="*", metavar="PICTURE_OR_VIDEO",
                   help="picture or video files, or folders of them (their pictures and videos, by "
                        "extension, not their sub-folders)")
    p.add_argument("--out", default="detections")
    p.add_argument("--min-score", type=_fraction, default=0.5, help="draw detections scored at least this")
    p.add_argument("--camera", type=int, help="read camera N (until Ctrl-C, q in the window, or --max-frames)")
    p.add_argument("--show", action="store_true", help="show the video in a window where a display exists")
    p.add_argument("--every", type=_positive_int, default=1,
                   help="run the model on every N-th frame; the frames between show the last boxes (default 1)")
    p.add_argument("--batch-size", type=_positive_int,
                   help="pictures or frames per model call (default: 8 for files, 1 for a camera)")
    p.add_argument("--start-frame", type=_non_negative_int, default=0, help="first frame of a video (default 0)")
    p.add_argument("--max-frames", type=_positive_int, help="stop after this many frames")
    p.set_defaults(func=_cmd_detect)
    return parser


def _training_description():
    return ("Train SSD300 on a PASCAL VOC-format dataset. Two recipes set the defaults: 'original' "
            "(the originals' notebook: Adam 3e-4 x 0.9^epoch, batch 16, 30 epochs, neg_pos_ratio 2, "
            "conv1_1 ... conv3_3 frozen, the originals' augmentation) and 'paper' (SGD 1e-3 with "
            "momentum 0.9 and weight decay 5e-4, /10 after 2/3 and 5/6 of 380 epochs, batch 32, "
            "per-image 3:1 hard negative mining, the paper's augmentation). Any option overrides the "
            "recipe. Outputs in --out: best.h5, last.h5 (weights by layer name), checkpoint.npz "
            "(for --resume), log.csv, loss.png.")


def main(argv=None, prog="ssd300", train_prog=None):
    """Run a command; returns the exit status."""
    args = build_parser(prog, train_prog).parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # training saves its checkpoint itself; every output is written atomically
        print("interrupted", file=sys.stderr)
        return 130


def train_main(argv=None):
    """``python ssd_training.py [options]``: ``ssd300 train [options]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return main(["train", *argv], prog="ssd_training.py", train_prog="ssd_training.py")


if __name__ == "__main__":
    sys.exit(main())
