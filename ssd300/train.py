"""Training SSD300 on a PASCAL VOC-format dataset: the ``ssd_training.py`` script.

Recipes (``--recipe``; any option given on the command line overrides them):

* ``original`` (default), the originals' notebook: Adam, learning rate 3e-4
  decayed by 0.9 per epoch, batch 16, 30 epochs, ``neg_pos_ratio`` 2.0,
  the layers up to ``conv3_3`` frozen, the originals' augmentation.
* ``paper``, the SSD paper's VOC2007 schedule: SGD with momentum 0.9 and
  weight decay 5e-4, learning rate 1e-3 divided by 10 after 2/3 and 5/6 of
  the epochs (40k and 50k of 60k iterations at batch 32), per-image 3:1 hard
  negative mining, the paper's augmentation.

Outputs, in ``--out``: ``best.h5`` and ``last.h5`` (weights by layer name,
Keras 2 layout), ``checkpoint.npz`` (weights, optimizer state and epoch, for
``--resume``), ``log.csv``, ``loss.png``, optionally ``tensorboard/``. Every
file is written to a temporary name and renamed.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np

from .atomic import atomic_path

RECIPES = {
    "original": dict(optimizer="adam", lr=3e-4, epochs=30, batch_size=16, neg_pos_ratio=2.0,
                     augment="original", schedule="exp0.9", per_image_mining=False,
                     freeze="conv1_1,conv1_2,conv2_1,conv2_2,conv3_1,conv3_2,conv3_3"),
    "paper": dict(optimizer="sgd", lr=1e-3, epochs=380, batch_size=32, neg_pos_ratio=3.0,
                  augment="paper", schedule="steps", per_image_mining=True, freeze=""),
}

VOC_LAYOUT = """Expected a PASCAL VOC folder:
  {root}/
    Annotations/*.xml
    JPEGImages/*.jpg
    ImageSets/Main/trainval.txt (and test.txt for evaluation)

Download VOC2007 (about 900 MB):
  wget http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar
  wget http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar
  tar xf VOCtrainval_06-Nov-2007.tar && tar xf VOCtest_06-Nov-2007.tar
then run: python ssd_training.py --voc-root VOCdevkit/VOC2007
Or try the whole path on generated data: python ssd_training.py --demo"""


class UserError(Exception):
    """A problem with the user's input, reported as a message and exit status 2."""


def check_voc_root(root, split):
    """Raise :class:`UserError` with the expected layout unless ``root`` is VOC-shaped."""
    needed = ["Annotations", "JPEGImages"]
    if split != "all":
        needed.append(os.path.join("ImageSets", "Main", f"{split}.txt"))
    missing = [p for p in needed if not os.path.exists(os.path.join(root, p))]
    if missing:
        what = "does not exist" if not os.path.isdir(root) else f"lacks {', '.join(missing)}"
        raise UserError(f"{root} {what}.\n\n" + VOC_LAYOUT.format(root=root))


def build_parser():
    p = argparse.ArgumentParser(
        prog="ssd_training.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voc-root", default="VOCdevkit/VOC2007", help="VOC dataset folder (default: %(default)s)")
    p.add_argument("--split", default="trainval",
                   help="ImageSets/Main list to train on, or 'all' for every annotation file as the "
                        "originals did (with --val-fraction 0.3 for their 70/30 split) "
                        "(default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="part of the training list held out for validation (default: %(default)s)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="original",
                   help="defaults for the options below (default: %(default)s)")
    p.add_argument("--epochs", type=int, help="original: 30, paper: 380")
    p.add_argument("--batch-size", type=int, help="original: 16, paper: 32")
    p.add_argument("--optimizer", choices=("adam", "sgd"), help="original: adam, paper: sgd")
    p.add_argument("--lr", type=float, help="initial learning rate; original: 3e-4, paper: 1e-3")
    p.add_argument("--clipnorm", type=float, help="clip each gradient to this norm (default: no clipping)")
    p.add_argument("--neg-pos-ratio", type=float, help="hard negatives per positive; original: 2.0, paper: 3.0")
    p.add_argument("--augment", choices=("original", "paper", "none"), help="original or paper (the recipe's)")
    p.add_argument("--weights", help="initial weights: an HDF5 file (by layer name) or 'vgg16' (ImageNet)")
    p.add_argument("--freeze", help="comma-separated layers to freeze; original: conv1_1 ... conv3_3, "
                                    "'' for none")
    p.add_argument("--input-size", type=int, default=300, help="input height and width (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="data-loading threads (default: %(default)s)")
    p.add_argument("--multiprocessing", action="store_true", help="load data in processes, not threads")
    p.add_argument("--mixed-precision", choices=("off", "float16", "bfloat16"), default="off",
                   help="mixed-precision policy (default: %(default)s)")
    p.add_argument("--out", default="runs/ssd300", help="output folder (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs")
    p.add_argument("--steps-per-epoch", type=int, help="limit the batches per epoch")
    p.add_argument("--time-limit", type=float, help="stop after this many minutes (at an epoch end)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-bad-images", action="store_true", help="warn and skip unreadable images")
    p.add_argument("--skip-bad-annotations", action="store_true",
                   help="warn and skip bad objects in the XML instead of stopping")
    p.add_argument("--skip-difficult", action="store_true", help="leave difficult objects out of training")
    p.add_argument("--demo", action="store_true",
                   help="generate a synthetic dataset, train a few minutes, evaluate and draw detections")
    p.add_argument("--demo-images", type=int, default=400, help="synthetic images for --demo")
    p.add_argument("--demo-minutes", type=float, default=5.0, help="training time for --demo")
    return p


def resolve(args):
    """Fill the options the user left unset from the recipe."""
    for key, value in RECIPES[args.recipe].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.augment == "none":
        args.augment = None
    return args


def learning_rate(args, epoch):
    if args.schedule == "constant":
        return args.lr
    if args.schedule == "exp0.9":
        return args.lr * 0.9 ** epoch
    return args.lr * (0.1 ** ((epoch >= args.epochs * 2 / 3) + (epoch >= args.epochs * 5 / 6)))


def make_optimizer(args):
    import keras

    clip = {"clipnorm": args.clipnorm} if args.clipnorm else {}
    if args.optimizer == "adam":
        return keras.optimizers.Adam(args.lr, **clip)
    return keras.optimizers.SGD(args.lr, momentum=0.9, weight_decay=5e-4, **clip)


def save_checkpoint(path, model, optimizer, state):
    """Weights, optimizer variables and ``state`` (a dict) in one ``.npz``, written atomically."""
    arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    arrays.update({f"o{i}": np.asarray(v) for i, v in enumerate(optimizer.variables)})
    arrays["state"] = np.frombuffer(json.dumps(state).encode("utf8"), dtype=np.uint8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_checkpoint(path):
    """``(weights, optimizer_values, state)`` from :func:`save_checkpoint`'s file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            state = json.loads(bytes(data["state"]).decode("utf8"))
            weights = [data[f"w{i}"] for i in range(sum(k.startswith("w") for k in data.files))]
            opt = [data[f"o{i}"] for i in range(sum(k.startswith("o") for k in data.files))]
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"{path}: not a readable checkpoint ({e})") from None
    return weights, opt, state


def load_dataset(args):
    from .voc import AnnotationError, XML_preprocessor, random_split, read_split

    check_voc_root(args.voc_root, args.split)
    try:
        ids = None if args.split == "all" else read_split(args.voc_root, args.split)
        prep = XML_preprocessor(os.path.join(args.voc_root, "Annotations"), ids=ids,
                                skip_difficult=args.skip_difficult,
                                on_error="warn" if args.skip_bad_annotations else "raise")
    except (AnnotationError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    keys = sorted(prep.data)
    if len(keys) < 2:
        raise UserError(f"{args.voc_root}: split {args.split!r} has {len(keys)} images; need at least 2")
    train_keys, val_keys = random_split(keys, 1 - args.val_fraction, seed=args.seed)
    if not val_keys:
        train_keys, val_keys = train_keys[:-1], train_keys[-1:]
    return prep, train_keys, val_keys


def build_model(args, num_classes):
    import keras

    from .ssd_v2 import SSD300v2

    if args.mixed_precision != "off":
        keras.mixed_precision.set_global_policy(f"mixed_{args.mixed_precision}")
    return SSD300v2((args.input_size, args.input_size, 3), num_classes=num_classes)


def load_initial_weights(model, args):
    from .weights import WeightFileError, load_vgg16_weights, load_weights_by_name

    if not args.weights:
        return
    try:
        if args.weights == "vgg16":
            report = load_vgg16_weights(model)
        else:
            report = load_weights_by_name(model, args.weights)
    except WeightFileError as e:
        raise UserError(str(e)) from None
    print(f"initial weights from {args.weights}: {report}")


def save_last(args, model, state):
    """``last.h5`` (weights by name) and ``checkpoint.npz`` (for --resume)."""
    from .weights import save_weights_by_name

    save_weights_by_name(model, os.path.join(args.out, "last.h5"))
    save_checkpoint(os.path.join(args.out, "checkpoint.npz"), model, model.optimizer, state)


def make_callbacks(args, model, state):
    import keras

    from .visualize import plot_history
    from .weights import save_weights_by_name

    out = args.out
    history = state.setdefault("history", {})

    class Checkpoints(keras.callbacks.Callback):
        """best.h5 / last.h5 by name, and checkpoint.npz for --resume, each written atomically."""

        def on_epoch_end(self, epoch, logs=None):
            if state.get("nan"):
                return  # keep the last good files
            logs = logs or {}
            for key, value in logs.items():
                history.setdefault(key, []).append(float(value))
            state["epoch"] = epoch + 1
            val = logs.get("val_loss", logs.get("loss"))
            if val is not None and np.isfinite(val) and val < state.get("best", math.inf):
                state["best"] = float(val)
                save_weights_by_name(self.model, os.path.join(out, "best.h5"))
            save_last(args, self.model, state)
            plot_history(history, os.path.join(out, "loss.png"))

    class StopOnNaN(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not np.isfinite(loss):
                state["nan"] = f"loss became {loss} at epoch {state.get('epoch', 0) + 1}, batch {batch + 1}"
                self.model.stop_training = True

    class TimeLimit(keras.callbacks.Callback):
        def __init__(self, minutes):
            super().__init__()
            self.deadline = time.monotonic() + 60 * minutes

        def on_train_batch_end(self, batch, logs=None):
            if time.monotonic() > self.deadline:
                self.model.stop_training = True

    callbacks = [
        keras.callbacks.LearningRateScheduler(lambda epoch: learning_rate(args, epoch)),
        StopOnNaN(),
        keras.callbacks.CSVLogger(os.path.join(out, "log.csv"), append=args.resume),
        Checkpoints(),
    ]
    if args.time_limit:
        callbacks.append(TimeLimit(args.time_limit))
    if args.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(out, "tensorboard")))
    return callbacks


def train(args):
    """Train as the options say; returns the process exit status."""
    import keras

    from .generator import SSDDataset
    from .priors import priors_from_model
    from .ssd_training import MultiboxLoss
    from .ssd_utils import BBoxUtility

    keras.utils.set_random_seed(args.seed)
    prep, train_keys, val_keys = load_dataset(args)
    num_classes = prep.num_classes + 1
    os.makedirs(args.out, exist_ok=True)
    checkpoint_path = os.path.join(args.out, "checkpoint.npz")
    state = {"epoch": 0, "classes": list(prep.classes), "input_size": args.input_size}
    resume_values = None
    if args.resume:
        if not os.path.isfile(checkpoint_path):
            raise UserError(f"{checkpoint_path}: no checkpoint to resume from")
        weights, optimizer_values, state = load_checkpoint(checkpoint_path)
        if state.get("classes") != list(prep.classes) or state.get("input_size") != args.input_size:
            raise UserError(f"{checkpoint_path}: trained for classes {state.get('classes')} at size "
                            f"{state.get('input_size')}, not {list(prep.classes)} at {args.input_size}")
        resume_values = (weights, optimizer_values)

    model = build_model(args, num_classes)
    if resume_values is None:
        load_initial_weights(model, args)
    else:
        model.set_weights(resume_values[0])
    frozen = [name for name in (args.freeze or "").split(",") if name]
    for name in frozen:
        try:
            model.get_layer(name).trainable = False
        except ValueError:
            raise UserError(f"--freeze: the model has no layer {name!r}") from None

    bbox_util = BBoxUtility(num_classes, priors_from_model(model))
    images = os.path.join(args.voc_root, "JPEGImages")
    size = (args.input_size, args.input_size)
    train_data = SSDDataset(prep.data, bbox_util, images, train_keys, size, args.batch_size,
                            train=True, augment=args.augment, seed=args.seed,
                            skip_bad_images=args.skip_bad_images, workers=args.workers,
                            use_multiprocessing=args.multiprocessing)
    val_data = SSDDataset(prep.data, bbox_util, images, val_keys, size, args.batch_size, train=False,
                          skip_bad_images=args.skip_bad_images, workers=args.workers,
                          use_multiprocessing=args.multiprocessing)
    optimizer = make_optimizer(args)
    loss = MultiboxLoss(num_classes, neg_pos_ratio=args.neg_pos_ratio,
                        per_image_mining=args.per_image_mining)
    model.compile(optimizer=optimizer, loss=loss.compute_loss)
    optimizer = model.optimizer  # mixed float16 wraps it in a LossScaleOptimizer
    if resume_values is not None:
        optimizer.build(model.trainable_variables)
        if len(optimizer.variables) != len(resume_values[1]):
            raise UserError(f"{checkpoint_path}: optimizer state does not match "
                            f"(--optimizer, --freeze or --mixed-precision changed since it was written)")
        for variable, value in zip(optimizer.variables, resume_values[1]):
            variable.assign(value)
        print(f"resuming from {checkpoint_path} after epoch {state['epoch']}")

    print(f"training on {len(train_keys)} images, validating on {len(val_keys)}; "
          f"{num_classes - 1} classes; recipe {args.recipe}: {args.optimizer} lr {args.lr}, "
          f"batch {args.batch_size}, neg_pos_ratio {args.neg_pos_ratio}, augment {args.augment}")
    callbacks = make_callbacks(args, model, state)
    start_epoch = state["epoch"]
    if start_epoch >= args.epochs:
        print(f"already trained {start_epoch} of {args.epochs} epochs")
        return 0
    try:
        model.fit(train_data, validation_data=val_data, epochs=args.epochs, initial_epoch=start_epoch,
                  steps_per_epoch=args.steps_per_epoch, callbacks=callbacks, verbose=1)
    except KeyboardInterrupt:
        save_last(args, model, state)
        print(f"\ninterrupted: saved {checkpoint_path} (epoch {state['epoch']}); "
              "continue with --resume", file=sys.stderr)
        return 130
    if state.get("nan"):
        good = (f"the weights of epoch {state['epoch']} are in {os.path.join(args.out, 'last.h5')}"
                if state["epoch"] else "no epoch had finished")
        print(f"error: training stopped: {state['nan']}; {good}. Try a lower --lr.", file=sys.stderr)
        return 1
    print(f"done: {state['epoch']} epochs; best validation loss {state.get('best', float('nan')):.4f}; "
          f"weights in {args.out}")
    return 0


def explicit_options(parser, argv):
    """The ``dest`` of every option given in ``argv``."""
    given = {token.split("=", 1)[0] for token in argv if token.startswith("-")}
    return {a.dest for a in parser._actions if given & set(a.option_strings)}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = resolve(parser.parse_args(argv))
    try:
        if args.demo:
            from .demo import run_demo

            return run_demo(args, explicit_options(parser, argv))
        return train(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
