"""Training SSD300: a :class:`TrainConfig` and :func:`fit`.

Two recipes are presets of the configuration (:data:`RECIPES`):

* ``original`` (the defaults), the originals' notebook: Adam, learning rate
  3e-4 decayed by 0.9 per epoch, batch 16, 30 epochs, ``neg_pos_ratio`` 2.0,
  the layers up to ``conv3_3`` frozen, the originals' augmentation.
* ``paper``, the SSD paper's VOC2007 schedule: SGD with momentum 0.9 and
  weight decay 5e-4, learning rate 1e-3 divided by 10 after 2/3 and 5/6 of
  the epochs (40k and 50k of 60k iterations at batch 32), per-image 3:1 hard
  negative mining, the paper's augmentation.

Outputs, in ``config.out``: ``best.h5`` and ``last.h5`` (weights by layer
name, Keras 2 layout), ``classes.txt`` (the labels' names), ``checkpoint.npz`` (weights, optimizer state and run
state, for ``resume``), ``log.csv``, ``loss.png``, optionally
``tensorboard/``; after a Ctrl-C in the middle of an epoch, ``interrupted.h5``
(that epoch's partial weights; the checkpoint stays at the last whole epoch).
Every file is written to a temporary name and renamed.

Example:

>>> from ssd300.training import RECIPES, fit
>>> import dataclasses
>>> config = dataclasses.replace(RECIPES["original"], voc_root="VOCdevkit/VOC2007", epochs=2)
>>> result = fit(config)  # doctest: +SKIP
"""

import dataclasses
import gc
import math
import os
import tempfile
from dataclasses import dataclass, field

import keras

from .atomic import atomic_path, missing_folders, remove_empty_folders
from .callbacks import (Checkpointer, DataEpoch, ProgressBar, StopOnCtrlC, StopOnNaN, TimeLimit,
                        TimeLimitReached, save_weights)
from .checkpoint import CHECKPOINT, load_checkpoint, remove_stale_temporaries
from .checks import is_integer, is_number
from .datasets import load_training_data
from .distribute import DEFAULT_TIMEOUT, DISTRIBUTIONS, scope
from .distribute import start as start_distribution
from .errors import UserError
from .generator import SSDDataset
from .layout import num_classes_with_background
from .priors import priors_from_model
from .ssd_training import MultiboxLoss
from .ssd_utils import BBoxUtility
from .speed import fit_settings
from .ssd_v2 import SSD300v2
from .voc import annotation_sizes, check_classes
from .weights import load_vgg16_weights, load_weights_by_name

ORIGINAL_FROZEN = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3")

#: The :class:`TrainConfig` fields that ``resume`` may change: how long, where and how fast
#: the run goes, not what it computes. ``weights`` is not read on resume (the checkpoint
#: holds them); ``jit_compile`` and the distribution's rendezvous settings do not change the
#: training. Every other field is stored in the checkpoint (``state["config"]``) and checked.
RESUMABLE_CHANGES = frozenset({"epochs", "time_limit", "workers", "multiprocessing", "progress", "tensorboard",
                               "out", "resume", "weights", "jit_compile", "coordinator", "process_id",
                               "distribute_timeout"})
_PATHS = ("voc_root", "coco_json", "images")

#: The status of a run that ``time_limit`` stopped (see :class:`FitResult`; exit status 0).
TIME_LIMIT = "time_limit"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; the defaults are the originals' recipe.

    Data: ``voc_root`` (a PASCAL VOC folder), or ``coco_json`` (a COCO JSON
    file with its ``images`` folder, or a COCO/Roboflow dataset folder),
    ``split`` (an ``ImageSets/Main`` list, or ``"all"`` for every annotation
    file as the originals did; a COCO folder's split, ``trainval`` meaning
    ``train``), ``val_fraction`` held out for validation, ``classes``
    (``None``: the dataset's ``classes.txt``, else the 20 VOC classes),
    ``skip_bad_images`` / ``skip_bad_annotations`` (warn and skip instead of
    stopping), ``skip_difficult``.

    Model: ``input_size`` (height and width), ``weights`` (an HDF5 file loaded
    by layer name, ``"vgg16"`` for ImageNet VGG16, or ``None``), ``freeze``
    (layer names), ``mixed_precision`` (``None``, ``"float16"`` or
    ``"bfloat16"``).

    Optimisation: ``optimizer`` (``"adam"`` or ``"sgd"``: momentum 0.9,
    weight decay 5e-4), ``lr``, ``schedule`` (``"exp0.9"``: ``lr * 0.9 **
    epoch``; ``"steps"``: divided by 10 after 2/3 and 5/6 of the epochs;
    ``"constant"``), ``clipnorm``, ``epochs``, ``batch_size``,
    ``steps_per_epoch`` (``None``: every training image once), ``time_limit``
    (minutes), ``neg_pos_ratio``, ``per_image_mining``, ``augment``
    (``"original"``, ``"paper"`` or ``None``).

    Run: ``out`` folder, ``resume`` from its checkpoint, ``tensorboard``,
    ``workers`` (data-loading threads, or processes with
    ``multiprocessing``), ``seed``, ``jit_compile`` (Keras's; ``"auto"``
    lets Keras choose), ``progress`` (a bar with the ETA).

    Distribution (:mod:`ssd300.distribute`): ``distribute`` (``None``: one
    device; ``"data-parallel"``: every device of every process on JAX, the
    local devices on TensorFlow; ``batch_size`` is then the global batch),
    ``coordinator`` (``host:port`` of process 0), ``num_processes``,
    ``process_id`` (``None``: from the environment, e.g. SLURM),
    ``distribute_timeout`` (seconds to wait for every process, and after which
    a silent process counts as dead).
    """

    voc_root: str = "VOCdevkit/VOC2007"
    coco_json: str | None = None
    images: str | None = None
    split: str = "trainval"
    val_fraction: float = 0.1
    classes: tuple | None = None
    skip_bad_images: bool = False
    skip_bad_annotations: bool = False
    skip_difficult: bool = False

    input_size: int = 300
    weights: str | None = None
    freeze: tuple = ORIGINAL_FROZEN
    mixed_precision: str | None = None

    optimizer: str = "adam"
    lr: float = 3e-4
    schedule: str = "exp0.9"
    clipnorm: float | None = None
    epochs: int = 30
    batch_size: int = 16
    steps_per_epoch: int | None = None
    time_limit: float | None = None
    neg_pos_ratio: float = 2.0
    per_image_mining: bool = False
    augment: str | None = "original"

    out: str = "runs/ssd300"
    resume: bool = False
    tensorboard: bool = False
    workers: int = 2
    multiprocessing: bool = False
    seed: int = 0
    jit_compile: object = "auto"
    progress: bool = True

    distribute: str | None = None
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    distribute_timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self):
        for name in ("epochs", "batch_size", "input_size", "workers", "steps_per_epoch"):
            value = getattr(self, name)
            # A float was truncated (batch 2.5 ran as 2) or failed deep inside Keras (epochs 1.5).
            if value is not None and (not is_integer(value) or value < 1):
                raise UserError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.input_size < 32:
            raise UserError(f"input-size must be at least 32 (SSD300's five poolings), got {self.input_size}")
        for name in ("neg_pos_ratio", "clipnorm", "time_limit"):
            value = getattr(self, name)
            if value is not None and (not is_number(value) or not 0 < value < math.inf):
                raise UserError(f"{name.replace('_', '-')} must be a positive number, got {value!r}")
        if isinstance(self.freeze, str):  # one name, read letter by letter
            raise UserError(f"freeze must be a list of layer names, got the string {self.freeze!r}")
        if self.classes is not None:
            check_classes(self.classes, "classes")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise UserError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 < self.lr < math.inf:
            raise UserError(f"lr must be a positive number, got {self.lr}")
        if not self.distribute_timeout > 0:
            raise UserError(f"distribute-timeout must be positive, got {self.distribute_timeout}")
        if not self.distribute and (self.coordinator or self.num_processes or self.process_id is not None):
            raise UserError("coordinator, num-processes and process-id need distribute "
                            "(--distribute data-parallel)")
        if self.distribute and self.skip_bad_images:
            raise UserError("skip-bad-images cannot be used with distribute: every process must load "
                            "batches of the same size")
        checks = {"optimizer": ("adam", "sgd"), "schedule": ("exp0.9", "steps", "constant"),
                  "augment": ("original", "paper", None), "mixed_precision": (None, "float16", "bfloat16"),
                  "distribute": (None, *DISTRIBUTIONS)}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"{name.replace('_', '-')} must be one of {allowed}, got {getattr(self, name)!r}")


#: The recipes, as presets: ``dataclasses.replace(RECIPES["paper"], epochs=10)``.
RECIPES = {
    "original": TrainConfig(),
    "paper": TrainConfig(optimizer="sgd", lr=1e-3, schedule="steps", epochs=380, batch_size=32,
                         neg_pos_ratio=3.0, per_image_mining=True, augment="paper", freeze=()),
}


@dataclass
class FitResult:
    """What :func:`fit` did.

    Attributes:
        status: ``"done"``, ``"nan"`` (stopped on a non-finite loss),
            ``"interrupted"`` (Ctrl-C; the checkpoint of the last whole
            epoch is kept, the partial epoch's weights are in
            ``interrupted.h5``), :data:`TIME_LIMIT` (``time_limit``
            reached; the checkpoint of the last whole epoch is kept) or
            ``"up_to_date"`` (the checkpoint had all epochs already).
        epochs: epochs completed and saved (from the start of the run, resumes included).
        best_val_loss: the best validation loss, or ``None``.
        message: one line for the user.
        history: ``{metric: [value per epoch]}``.
        classes: the class names of the model's labels ``1 .. C``.
    """

    status: str
    epochs: int
    best_val_loss: float | None
    message: str
    history: dict = field(default_factory=dict)
    classes: tuple = ()


def learning_rate(config, epoch):
    """The learning rate of ``epoch`` (0-based) under ``config.schedule``."""
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "exp0.9":
        return config.lr * 0.9 ** epoch
    return config.lr * 0.1 ** ((epoch >= config.epochs * 2 / 3) + (epoch >= config.epochs * 5 / 6))


def make_optimizer(config):
    """Adam, or the paper's SGD (momentum 0.9, weight decay 5e-4); ``clipnorm`` if set."""
    clip = {"clipnorm": config.clipnorm} if config.clipnorm else {}
    if config.optimizer == "adam":
        return keras.optimizers.Adam(config.lr, **clip)
    return keras.optimizers.SGD(config.lr, momentum=0.9, weight_decay=5e-4, **clip)


def build_model(config, num_classes):
    """SSD300 at ``config.input_size`` under ``config.mixed_precision``, the global policy left as it was."""
    previous = keras.mixed_precision.global_policy()
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy(f"mixed_{config.mixed_precision}")
    try:
        return SSD300v2((config.input_size, config.input_size, 3), num_classes=num_classes)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def load_initial_weights(model, weights):
    """Load ``weights`` (a file by layer name, or ``"vgg16"``); returns the report, or ``None``."""
    if not weights:
        return None
    return load_vgg16_weights(model) if weights == "vgg16" else load_weights_by_name(model, weights)


def freeze_layers(model, names):
    """Make the named layers untrainable.

    Raises:
        UserError: the model has no layer of that name.
    """
    for name in names:
        try:
            model.get_layer(name).trainable = False
        except ValueError:
            raise UserError(f"--freeze: the model has no layer {name!r}") from None


def run_definition(config):
    """The options that define ``config``'s training, as plain JSON values (``state["config"]``).

    Every field but :data:`RESUMABLE_CHANGES`; dataset paths made absolute,
    tuples made lists, ``freeze`` sorted (its order does not matter).
    """
    definition = {}
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if item.name in RESUMABLE_CHANGES:
            continue
        if item.name in _PATHS and value is not None:
            value = os.path.abspath(os.fspath(value))
        elif item.name == "freeze":
            value = sorted(value)
        elif isinstance(value, tuple):
            value = list(value)
        definition[item.name] = value
    return definition


def read_resume_state(config, data):
    """``(weights, optimizer_values, state)`` of ``config.out``'s checkpoint, checked against the run.

    Args:
        config: the run's :class:`TrainConfig`.
        data: its :class:`ssd300.datasets.TrainingData`.

    A dataset read from another folder is the same dataset when its
    :meth:`~ssd300.datasets.TrainingData.fingerprint` is the checkpoint's
    (``state["data"]``): the paths in ``state["config"]`` become the new
    ones, and ``state["moved"]`` (not saved) lists ``(option, old, new)``.

    Raises:
        UserError: the checkpoint is missing or unreadable, was trained for
            other classes or input size, or with other options (each
            difference named; a checkpoint without ``state["config"]``,
            written before options were stored, is not checked for them).
    """
    path = os.path.join(config.out, CHECKPOINT)
    weights, optimizer_values, state = load_checkpoint(path)
    classes = list(data.classes)
    if state.get("classes") != classes or state.get("input_size") != config.input_size:
        raise UserError(f"{path}: trained for classes {state.get('classes')} at size "
                        f"{state.get('input_size')}, not {classes} at {config.input_size}")
    saved = state.get("config")
    if saved is not None:
        current = run_definition(config)
        moved = [(name, saved.get(name), current[name]) for name in _PATHS if saved.get(name) != current[name]]
        if moved and state.get("data") == data.fingerprint():  # the same data, read from elsewhere
            saved.update({name: new for name, _, new in moved})
            state["moved"] = moved
        differences = [f"{name.replace('_', '-')} {_show(saved.get(name))}, this run has {_show(value)}"
                       for name, value in current.items() if saved.get(name, value) != value]
        differences += [f"{name.replace('_', '-')} {_show(value)}, this run does not have it"
                        for name, value in saved.items() if name not in current]
        if differences:
            raise UserError(f"--resume: {path} was trained with " + "; ".join(differences)
                            + ". Give the same options to continue it, or another --out for a new run")
    return weights, optimizer_values, state


def _show(value):
    """An option's value as the command line spells it."""
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "(none)"
    return str(value)


def restore_optimizer(model, values, path):
    """Set the compiled optimizer's variables (the step count included) from a checkpoint.

    Raises:
        UserError: the checkpoint's optimizer variables differ in number or
            shape from this run's (another optimizer, ``freeze`` or
            ``mixed_precision``).
    """
    optimizer = model.optimizer  # mixed float16 wraps it in a LossScaleOptimizer
    optimizer.build(model.trainable_variables)
    expected = [tuple(variable.shape) for variable in optimizer.variables]
    found = [tuple(value.shape) for value in values]
    if expected != found:
        raise UserError(f"{path}: its optimizer state ({len(found)} variables) does not fit this run's "
                        f"({len(expected)} variables{'' if len(found) != len(expected) else ', other shapes'}): "
                        "--optimizer, --freeze or --mixed-precision changed since it was written")
    for variable, value in zip(optimizer.variables, values):
        variable.assign(value)


def make_callbacks(config, state, initial_epoch, train_data, run=None):
    """The run's callbacks; in a :class:`~ssd300.distribute.DataParallelRun`, process 0 alone writes and prints."""
    chief = run is None or run.is_chief
    callbacks = [
        DataEpoch(train_data),
        keras.callbacks.LearningRateScheduler(lambda epoch: learning_rate(config, epoch)),
        StopOnNaN(state),
    ]
    if config.time_limit:  # before the Checkpointer: it marks an epoch cut part-way
        callbacks.append(TimeLimit(config.time_limit, state, agree=run.agree if run else None))
    callbacks.append(Checkpointer(config.out, state, write=chief))
    if config.tensorboard and chief:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(config.out, "tensorboard")))
    if chief:
        callbacks.append(ProgressBar(initial_epoch, bar=config.progress, state=state))
    # Last: the step that ends on a Ctrl-C is counted and shown first.
    callbacks.append(StopOnCtrlC(agree=run.agree if run else None))
    return callbacks


def fit(config):
    """Train SSD300 as ``config`` says.

    Args:
        config: a :class:`TrainConfig`.

    Returns:
        :class:`FitResult`.

    Raises:
        UserError: a bad dataset, weights file, checkpoint or option, an
            output folder that cannot be written (the message names the file
            and the problem). A run that saves no epoch (it fails, or stops
            on a NaN, Ctrl-C or the time limit, before its first epoch is
            saved) leaves ``config.out`` as it found it: no ``classes.txt``
            of its own (the previous one is put back), no new empty folder.
    """
    run = start_distribution(config)  # None: a plain run on one device
    chief = run is None or run.is_chief
    keras.utils.set_random_seed(config.seed)
    data = load_training_data(config)
    made = missing_folders(config.out)
    try:
        os.makedirs(config.out, exist_ok=True)
        with tempfile.TemporaryFile(dir=config.out):  # nameless: nothing is left behind
            pass
    except OSError as e:
        remove_empty_folders(made)
        raise UserError(f"{config.out}: cannot write in the output folder ({e.strerror or e})") from None
    classes_file = _RevertibleFile(os.path.join(config.out, "classes.txt"))
    fingerprint = data.fingerprint()
    state = {"epoch": 0, "classes": list(data.classes), "input_size": config.input_size,
             "config": run_definition(config), "data": fingerprint}
    start_epoch = 0

    def undo():  # no epoch of this run was saved: take back what it wrote
        if state["epoch"] == start_epoch:
            if chief:
                classes_file.restore()
            remove_empty_folders(made)  # not one that holds a TensorBoard log or interrupted.h5

    try:
        resume = read_resume_state(config, data) if config.resume else None
        if resume:
            state = resume[2]
            state.setdefault("data", fingerprint)  # a checkpoint written before it was stored
            start_epoch = state["epoch"]
        result = _train(config, run, data, state, resume, classes_file)
    except BaseException:
        undo()
        raise
    finally:
        # When fit raises (a Ctrl-C, the time limit), Keras leaves the data's TensorFlow iterators
        # on the model, in reference cycles; at exit TensorFlow would then run their Python
        # generators' cleanup in a finished interpreter (an error, and "the process may be
        # terminated"). Freed here, with the model, while Python still runs. (An error's
        # traceback still holds the model until its caller lets go.)
        gc.collect()
    if result.status != "up_to_date":
        undo()
    return result


class _RevertibleFile:
    """A small text file that a run writes and can take back, restoring what was there before.

    Args:
        path: the file (e.g. ``OUT/classes.txt``).
    """

    def __init__(self, path):
        self.path = path
        self.previous = None  # the bytes it held before write(); None: it did not exist
        self.written = False

    def write(self, text):
        """Write ``text`` (UTF-8) atomically, remembering the old content the first time."""
        if not self.written and os.path.isfile(self.path):
            with open(self.path, "rb") as f:
                self.previous = f.read()
        with atomic_path(self.path) as tmp, open(tmp, "w", encoding="utf8") as f:
            f.write(text)
        self.written = True

    def restore(self):
        """Undo :meth:`write`: remove the file, or put the old content back."""
        if not self.written:
            return
        if self.previous is None:
            os.remove(self.path)
        else:
            with atomic_path(self.path) as tmp, open(tmp, "wb") as f:
                f.write(self.previous)
        self.written = False


def _train(config, run, data, state, resume, classes_file):
    """:func:`fit` once the data and the checkpoint (``resume``) are read and ``config.out`` exists.

    ``state`` is updated in place (``state["epoch"]`` counts the saved
    epochs); ``classes_file`` is written once the model, weights and layers
    are checked.
    """
    chief = run is None or run.is_chief
    say = print if chief else _quiet  # process 0 alone writes files and prints
    num_classes = num_classes_with_background(data.classes)
    checkpoint_path = os.path.join(config.out, CHECKPOINT)
    if chief:
        for name in remove_stale_temporaries(config.out):
            print(f"removed {name}, left by an interrupted run")
    if resume and run:
        run.check_same([state["epoch"], int(resume[1][0]) if resume[1] else 0],
                       f"the epoch and step of {checkpoint_path}")

    batch_size, val_batch_size, shard = config.batch_size, config.batch_size, {}
    if run:
        run.check_batch(batch_size, len(data.train_keys), "training")
        val_batch_size = run.validation_batch(batch_size, len(data.val_keys))
        shard = run.shard()
        say(f"distributed: {run.describe(batch_size)}; validation batch {val_batch_size}; whole batches "
            f"only ({len(data.train_keys) % batch_size} training and "
            f"{len(data.val_keys) % val_batch_size} validation images left out per epoch)")
    with scope(run):
        model = build_model(config, num_classes)
        if resume:
            model.set_weights(resume[0])
        else:
            report = load_initial_weights(model, config.weights)
            if report is not None:
                say(f"initial weights from {config.weights}: {report}")
        freeze_layers(model, config.freeze)

        bbox_util = BBoxUtility(num_classes, priors_from_model(model))
        size = (config.input_size, config.input_size)
        loading = dict(skip_bad_images=config.skip_bad_images, workers=config.workers,
                       use_multiprocessing=config.multiprocessing,
                       sizes=annotation_sizes(data.dataset.annotations), **shard)
        train_data = SSDDataset(data.dataset.data, bbox_util, data.image_dir, data.train_keys, size,
                                batch_size, train=True, augment=config.augment, seed=config.seed,
                                steps_per_epoch=config.steps_per_epoch, **loading)
        val_data = SSDDataset(data.dataset.data, bbox_util, data.image_dir, data.val_keys, size,
                              val_batch_size, train=False, **loading)
        loss = MultiboxLoss(num_classes, neg_pos_ratio=config.neg_pos_ratio,
                            per_image_mining=config.per_image_mining)
        # "auto": the fastest correct choice measured per backend (ssd300.speed).
        jit = fit_settings()["jit_compile"] if config.jit_compile == "auto" else config.jit_compile
        model.compile(optimizer=make_optimizer(config), loss=loss.compute_loss, jit_compile=jit)

        start_epoch = state["epoch"]
        if resume:
            restore_optimizer(model, resume[1], checkpoint_path)
            say(f"resuming from {checkpoint_path} after epoch {start_epoch}")
            for name, old, new in state.get("moved", ()):
                say(f"the dataset moved: --{name.replace('_', '-')} {_show(old)} is now {_show(new)} "
                    "(the same images and boxes)")
        if chief:
            # Everything is checked now; detect and evaluate read the class names beside the weights.
            classes_file.write("".join(f"{name}\n" for name in data.classes))
        # The datasets' keys: --skip-bad-images has dropped the unreadable ones.
        say(f"training on {len(train_data.keys)} images, validating on {len(val_data.keys)}; "
            f"{num_classes - 1} classes; {config.optimizer} lr {config.lr} ({config.schedule}), "
            f"batch {config.batch_size}, neg_pos_ratio {config.neg_pos_ratio}, augment {config.augment}")
        if start_epoch >= config.epochs:
            return _result("up_to_date", state, data.classes,
                           f"already trained {start_epoch} of {config.epochs} epochs")
        callbacks = make_callbacks(config, state, start_epoch, train_data, run)
        ctrl_c = next(c for c in callbacks if isinstance(c, StopOnCtrlC))
        try:
            # shuffle=False: SSDDataset shuffles by (seed, epoch); Keras would reorder the
            # batches with Python's global random state, which a resumed run cannot restore.
            # The dataset limits the steps per epoch itself (see SSDDataset).
            with ctrl_c.installed():  # Ctrl-C stops at a step's end, not inside Keras
                model.fit(train_data, validation_data=val_data, epochs=config.epochs,
                          initial_epoch=start_epoch, shuffle=False, callbacks=callbacks, verbose=0)
        except TimeLimitReached:  # the cut epoch's validation, skipped: state["cut"] says the rest
            for callback in callbacks:
                callback.on_train_end()
        except KeyboardInterrupt:
            return _interrupted(model, config.out, state, callbacks, chief, data.classes)
        except Exception as e:
            failure = train_data.pipeline.failure or val_data.pipeline.failure
            if failure is not None:
                raise failure from None
            if run is None or run.num_processes == 1 or isinstance(e, UserError):
                raise
            raise run.failure(e) from e
        finally:  # Keras skips on_train_end when fit raises: the bar ends its line before any message
            for bar in (c for c in callbacks if isinstance(c, ProgressBar)):
                bar.close()
    if state.get("nan"):
        good = (f"the weights of epoch {state['epoch']} are in {os.path.join(config.out, 'last.h5')}"
                if state["epoch"] else "no epoch had finished")
        return _result("nan", state, data.classes,
                       f"training stopped: {state['nan']}; {good}. Try a lower --lr.")
    cut = state.get("cut")
    if cut or state["epoch"] < config.epochs:  # only the time limit stops a run early without either
        where = (f"in epoch {cut['epoch']} after {cut['steps']} step{'s' * (cut['steps'] != 1)}" if cut
                 else f"after epoch {state['epoch']}")
        kept = (f"checkpoint of epoch {state['epoch']} {'kept' if cut else 'saved'}; --resume continues"
                if state["epoch"] else "no epoch had finished: nothing saved")
        return _result(TIME_LIMIT, state, data.classes, f"time limit reached {where}; {kept}")
    best = state.get("best")
    return _result("done", state, data.classes,
                   f"done: {state['epoch']} epochs; best validation loss "
                   f"{best if best is None else round(best, 4)}; weights in {config.out}")


def _interrupted(model, out, state, callbacks, chief, classes):
    """The result of a Ctrl-C out of ``model.fit``: the last whole epoch's files kept, the partial epoch's weights in ``interrupted.h5``."""
    checkpointer = next(c for c in callbacks if isinstance(c, Checkpointer))
    checkpointer.finish()  # a Ctrl-C during the epoch-end writes: complete them
    # The Checkpointer moves state["epoch"] only once an epoch's checkpoint is written.
    saved, running = state["epoch"], state.get("running_epoch", state["epoch"]) + 1
    if saved >= running:
        return _result("interrupted", state, classes,
                       f"interrupted after epoch {saved}: its checkpoint is saved, --resume continues exactly from it")
    partial = os.path.join(out, "interrupted.h5")
    if chief:
        save_weights(model, partial)
    kept = (f"checkpoint of epoch {saved} kept, --resume continues exactly from it" if saved
            else "no epoch had finished, so there is no checkpoint to resume from")
    return _result("interrupted", state, classes,
                   f"interrupted in epoch {running}: {kept}; the partial epoch's weights are in {partial}")


def _quiet(*args, **kwargs):
    """``print`` of the processes other than 0."""


def _result(status, state, classes, message):
    return FitResult(status, state["epoch"], state.get("best"), message,
                     dict(state.get("history", {})), tuple(classes))


def recipe(name, **overrides):
    """``RECIPES[name]`` with ``overrides``; unknown names raise :class:`UserError`."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return dataclasses.replace(RECIPES[name], **overrides)
