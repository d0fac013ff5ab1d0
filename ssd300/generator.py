"""Training batches: the originals' ``Generator`` and a ``keras.utils.PyDataset``.

Both share :class:`SamplePipeline`: read an image (Pillow, upright by its
EXIF orientation), augment it (:mod:`ssd300.augment`), resize, and encode its
boxes with ``BBoxUtility.assign_boxes``. Batches are
``(preprocess_input(images), targets)``: float32 ``(batch, H, W, 3)`` in Caffe
mode (BGR, mean subtracted) and float32 ``(batch, num_priors, 4 + num_classes + 8)``;
the augmentation writes each image straight into its slot of the batch.
"""

import atexit
import collections.abc
import functools
import glob
import math
import multiprocessing
import os
import tempfile
import warnings

import numpy as np

from .atomic import process_running
from .augment import Augmentation, OriginalAugmentation, PaperAugmentation
from .checks import image_size_hw, is_integer
from .errors import UserError
from .image_io import (ImageError, keys_used_as_stored, open_rgb, planes, preprocess_input, read_header,
                       resize_pil, write_planes)
from .voc import annotation_sizes  # noqa: F401 - also ssd300.generator's, where it used to live


class SamplePipeline:
    """One training or validation sample: image file and ground truth in, tensors out.

    Args:
        gt: ``{key: (num_objects, 4 + num_classes - 1)}`` normalised boxes with
            one-hot classes, as ``XML_preprocessor.data``.
        bbox_util: the ``BBoxUtility`` that encodes the targets.
        path_prefix: prepended to a key to give the image path (a folder
            with or without a trailing separator).
        image_size: network input ``(height, width)``.
        augment: ``"original"``, ``"paper"``, ``None`` (no augmentation),
            or an object called as ``augment(image, boxes, rng)`` with a
            uint8 ``(H, W, 3)`` array.
        sizes: optional ``{key: (width, height)}`` of the annotations; an image
            whose EXIF orientation swaps its sides but whose annotation has the
            stored size is used as stored (:func:`keys_used_as_stored`).
            Without it every image is turned upright.
        **augment_options: arguments of the augmentation policy.
    """

    #: The last ImageError raised by :meth:`batch`, or ``None``.
    failure = None

    def __init__(self, gt, bbox_util, path_prefix, image_size, augment="original", sizes=None,
                 **augment_options):
        self.gt = gt
        self.bbox_util = bbox_util
        self.path_prefix = os.fspath(path_prefix)
        # The original concatenated path_prefix + key; a folder given without
        # its trailing separator works too.
        if self.path_prefix and not self.path_prefix.endswith(("/", os.sep)) \
                and os.path.isdir(self.path_prefix):
            self.path_prefix += os.sep
        self.image_size = image_size_hw(image_size)
        if augment == "original":
            augment = OriginalAugmentation(self.image_size, **augment_options)
        elif augment == "paper":
            augment = PaperAugmentation(self.image_size, **augment_options)
        elif augment is not None and not callable(augment):
            raise ValueError(f"augment must be 'original', 'paper', None or callable, got {augment!r}")
        self.augment = augment
        self.as_stored = frozenset()
        if sizes is not None:
            self.as_stored = keys_used_as_stored(
                self.path_prefix, {k: v for k, v in sizes.items() if k in gt})

    def image_path(self, key):
        return self.path_prefix + key

    def readable(self, keys, part=""):
        """The keys whose image header can be read, in order; one warning names the others.

        Used with ``skip_bad_images`` so that no batch is left without an
        image: a batch of unreadable images only would have nothing to
        train on. Reads only the headers (about 0.1 ms an image).

        Args:
            keys: image keys.
            part: names the keys in messages (``"training"``, ``"validation"``).

        Returns:
            list of keys.

        Raises:
            ImageError: no image is readable.
        """
        keys = list(keys)
        good, bad = [], []
        for key in keys:
            try:
                read_header(self.image_path(key))
            except ImageError as e:
                bad.append((key, e))
                continue
            good.append(key)
        if bad and not good:
            raise ImageError(f"none of the {len(keys)} {part + ' ' if part else ''}images can be read "
                             f"(first: {bad[0][1]})")
        if bad:
            shown = "; ".join(str(e) for _, e in bad[:10]) + ("; ..." if len(bad) > 10 else "")
            warnings.warn(f"{len(bad)} of {len(keys)} {part + ' ' if part else ''}images cannot be read "
                          f"and are skipped: {shown}",
                          stacklevel=3)
        return good

    @functools.cached_property
    def empty_target(self):
        """The float32 target of an image without boxes, ``(num_priors, columns)``:
        what most rows of every target are."""
        no_boxes = np.zeros((0, 4 + self.bbox_util.num_classes - 1))
        return self.bbox_util.assign_boxes(no_boxes, dtype=np.float32)

    def load(self, key, rng, train=True, out=None, caffe=False):
        """``(image, target)``: float32 ``(H, W, 3)`` RGB in [0, 255] and the encoded target.

        Args:
            key: the image key.
            rng: ``numpy.random.Generator`` of the augmentation.
            train: augment (else only resize).
            out: float32 ``(H, W, 3)`` to write the image into, or ``None``.
            caffe: give ``preprocess_input`` of the image instead (the same numbers).

        Raises:
            ImageError: the image is missing or unreadable (names the file).
        """
        if key not in self.gt:
            raise KeyError(f"{key}: no ground truth for this image")
        img = open_rgb(self.image_path(key), orient=key not in self.as_stored)
        boxes = np.asarray(self.gt[key], dtype=np.float64)
        if out is None:
            out = np.empty(self.image_size + (3,), np.float32)
        if not train or self.augment is None:
            image = write_planes(planes(resize_pil(img, self.image_size), np.uint8), out, caffe)
        elif isinstance(self.augment, Augmentation):
            image, boxes = self.augment(img, boxes, rng, out=out, caffe=caffe)
        else:
            image, boxes = self.augment(np.asarray(img), boxes, rng)
            out[...] = preprocess_input(image) if caffe else image
            image = out
        return image, self.bbox_util.assign_boxes(boxes, dtype=np.float32)

    def batch(self, keys, rngs, train, skip_bad_images=False):
        """``(preprocess_input(images), targets)`` of the keys' samples, float32."""
        images = np.empty((len(keys),) + self.image_size + (3,), np.float32)
        targets = None
        count = 0
        for key, rng in zip(keys, rngs):
            try:
                _, target = self.load(key, rng, train, out=images[count], caffe=True)
            except ImageError as e:
                if not skip_bad_images:
                    # Keras re-raises a loader's error as its own (a TensorFlow
                    # InvalidArgumentError); the training reports this one.
                    self.failure = e
                    raise
                warnings.warn(f"{e}; image skipped", stacklevel=2)
                continue
            if targets is None:
                targets = np.empty((len(keys),) + target.shape, np.float32)
            targets[count] = target
            count += 1
        if not count:
            # Recorded like the error above, for the training to report it instead of
            # Keras's re-raised one.
            self.failure = ImageError(f"no readable image in batch ({', '.join(map(str, keys))})")
            raise self.failure
        return images[:count], targets[:count]


#: The files that carry images from worker processes are named
#: ``<tempdir>/ssd300-batch-<training process id>-...``.
BATCH_FILE_PREFIX = "ssd300-batch-"


def _read_images(path, shape):
    """The float32 images ``shape`` a worker process wrote to ``path``; the file is removed."""
    images = np.empty(shape, np.float32)
    try:
        with open(path, "rb") as f:
            read = f.readinto(images)
    finally:
        os.unlink(path)
    if read != images.nbytes:
        raise OSError(f"{path}: {read} bytes of a batch of {images.nbytes}")
    return images


class LostImages:
    """Stands for the images of a batch that a worker process wrote to a file which
    could not be read back: using them (``np.asarray``, as Keras does) raises.

    Raising while unpickling would stop the pool's result thread and leave
    ``model.fit`` waiting for ever.
    """

    def __init__(self, message):
        self.message = message

    def __array__(self, dtype=None, copy=None):
        raise UserError(self.message)


def _batch_from_parts(images, shape, fill, rows_at, rows):
    """The batch ``(images, targets)`` that :class:`CompactBatch` pickles as parts."""
    if isinstance(images, tuple):  # (path, shape) of the file the worker wrote
        try:
            images = _read_images(*images)
        except OSError as e:
            images = LostImages(f"the images of a batch made by a worker process could not be read back "
                                f"from {images[0]} ({e}); run without use_multiprocessing if this recurs")
    targets = np.empty(shape, np.float32)
    targets[...] = fill
    targets.reshape(-1, shape[-1])[rows_at] = rows
    return images, targets


def _batch_files(pid="*"):
    """The image files of worker processes for training process ``pid`` (any by default)."""
    return glob.glob(os.path.join(glob.escape(tempfile.gettempdir()), f"{BATCH_FILE_PREFIX}{pid}-*"))


def _remove_quietly(path):
    try:
        os.unlink(path)
    except OSError:  # already gone, or not ours to remove
        pass


def remove_batch_files(pid=None):
    """Remove the image files of worker processes for training process ``pid`` (default:
    this one) that were never read, as when the training stops mid-transfer."""
    for path in _batch_files(os.getpid() if pid is None else pid):
        _remove_quietly(path)


def remove_stale_batch_files():
    """Remove the image files of training processes that no longer run (killed with
    batches in flight, when their exit handler could not run). POSIX only: elsewhere
    ``os.kill(pid, 0)`` is not a harmless probe."""
    if os.name != "posix":
        return
    for path in _batch_files():
        pid = os.path.basename(path)[len(BATCH_FILE_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not process_running(int(pid)):
            _remove_quietly(path)


_CLEANING = set()


class CompactBatch(tuple):
    """``(images, targets)`` from a worker process, pickled compactly.

    A worker process sends its batch back pickled through a pipe, which costs
    the training process about 2 ms of CPU per MB received (Python's
    ``multiprocessing`` reads it in 64 KB pieces): 30 ms for the 16 MB of a
    batch of 8, most of the worker's own time for the batch, on a core the
    workers need. So the images go through a file in the temporary directory
    (``tempfile.gettempdir()``), written by the worker and read straight into
    the batch array by the training process, which removes it (about 2 ms
    for 8 images; the pages never leave the file cache); and of the targets
    only the rows that differ from those of an image without boxes
    (background, no offsets) travel, with their positions, to be put back
    into that fill (about 0.5 ms). When the file cannot be written the
    images travel in the pipe. Unpickling gives a plain tuple of arrays
    equal to the batch; in the worker this is that tuple.

    Args:
        images, targets: the batch (float32 arrays).
        empty_target: ``(num_priors, columns)`` target of an image without boxes.
        owner: the id of the training process (names the image files).
    """

    def __new__(cls, images, targets, empty_target, owner):
        batch = super().__new__(cls, (images, targets))
        batch.empty_target, batch.owner = empty_target, owner
        return batch

    def _images_file(self, images):
        """``(path, shape)`` of a file holding ``images``, or ``None`` when it cannot be written."""
        if images.dtype != np.float32:
            return None
        fd, path = None, None
        try:
            fd, path = tempfile.mkstemp(prefix=f"{BATCH_FILE_PREFIX}{self.owner}-")
            with os.fdopen(fd, "wb") as f:
                fd = None
                f.write(np.ascontiguousarray(images).data)
        except OSError:
            if fd is not None:
                os.close(fd)
            if path is not None:
                _remove_quietly(path)
            return None
        return path, images.shape

    def __reduce__(self):
        images, targets = self
        columns = targets.shape[-1]
        fill = np.ascontiguousarray(self.empty_target, np.float32)
        bits = fill.reshape(-1).view(np.uint32)
        # Rows with any value other than the fill's (bit for bit): the positions
        # of the differing values, by row (they come in order).
        rows_at = np.flatnonzero(targets.reshape(len(targets), -1).view(np.uint32) != bits)
        rows_at //= columns
        if (bits.reshape(-1, columns) == bits[:columns]).all():
            fill = fill[0]  # one row fills them all (BBoxUtility's targets)
        rows_at = rows_at[np.r_[True, rows_at[1:] != rows_at[:-1]]] if len(rows_at) else rows_at
        return _batch_from_parts, (self._images_file(images) or images, targets.shape, fill, rows_at,
                                   targets.reshape(-1, columns)[rows_at])


def check_loader_arguments(gt, batch_size, parts):
    """Refuse what would fail, or hang, only once batches are drawn.

    Args:
        gt: ``{image key: (N, 4 + C)}``.
        batch_size: must be an integer >= 1.
        parts: ``{part name: keys}`` (e.g. ``{"training": train_keys}``).

    Raises:
        ValueError: a batch size that is not a positive integer, ``gt`` not
            a mapping, keys given as one string, or keys without ground
            truth (up to three named).
    """
    if not is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(gt, collections.abc.Mapping):
        raise ValueError(f"gt must map image keys to boxes (as XML_preprocessor(...).data), "
                         f"got {type(gt).__name__}")
    for part, keys in parts.items():
        if isinstance(keys, (str, bytes)):
            raise ValueError(f"{part} keys must be a list of image file names, got the string {keys!r}")
        missing = [k for k in keys if k not in gt]
        if missing:
            raise ValueError(f"{len(missing)} {part} keys have no ground truth in gt "
                             f"({', '.join(map(repr, missing[:3]))}{', ...' if len(missing) > 3 else ''}); "
                             f"keys are gt's image file names, such as {next(iter(gt), '000005.jpg')!r}")


class Generator:
    """The originals' batch generator (wikke/SSD_Keras ``generator.py``).

    Args:
        gt: ``{image file name: (num_objects, 4 + num_classes - 1)}``.
        bbox_util: ``BBoxUtility`` with the model's priors.
        batch_size: images per batch.
        path_prefix: image folder, prepended to the keys.
        train_keys, val_keys: image file names of each part.
        image_size: ``(height, width)`` of the network input.
        saturation_var ... aspect_ratio_range: see
            :class:`ssd300.augment.OriginalAugmentation`.
        augment: ``"original"`` (default) or ``"paper"``.
        seed: seed of the shuffling and augmentation, for reproducible runs.
        skip_bad_images: warn and skip an unreadable image instead of raising:
            images whose header cannot be read leave the keys at once (see
            :meth:`SamplePipeline.readable`), others when they are loaded.
        sizes: optional ``{key: (width, height)}`` of the annotations, for the
            EXIF orientation check (see :class:`SamplePipeline`).

    ``generate(train)`` yields ``(preprocess_input(images), targets)`` forever,
    reshuffling the keys each pass; like the original, only full batches are
    yielded. For ``model.fit`` with parallel loading use :class:`SSDDataset`.
    """

    def __init__(self, gt, bbox_util, batch_size, path_prefix, train_keys, val_keys, image_size,
                 saturation_var=0.5, brightness_var=0.5, contrast_var=0.5, lighting_std=0.5,
                 hflip_prob=0.5, vflip_prob=0.5, do_crop=True, crop_area_range=[0.75, 1.0],
                 aspect_ratio_range=[3. / 4., 4. / 3.], augment="original", seed=None,
                 skip_bad_images=False, sizes=None):
        check_loader_arguments(gt, batch_size, {"training": train_keys, "validation": val_keys})
        self.gt = gt
        self.bbox_util = bbox_util
        self.batch_size = batch_size
        self.path_prefix = path_prefix
        self.train_keys = list(train_keys)
        self.val_keys = list(val_keys)
        self.train_batches = len(train_keys)
        self.val_batches = len(val_keys)
        self.image_size = image_size
        self.skip_bad_images = skip_bad_images
        options = {}
        if augment == "original":
            options = dict(saturation_var=saturation_var, brightness_var=brightness_var,
                           contrast_var=contrast_var, lighting_std=lighting_std,
                           hflip_prob=hflip_prob, vflip_prob=vflip_prob, do_crop=do_crop,
                           crop_area_range=crop_area_range, aspect_ratio_range=aspect_ratio_range)
        if sizes is not None:
            wanted = set(self.train_keys) | set(self.val_keys)
            sizes = {k: v for k, v in sizes.items() if k in wanted}
        self.pipeline = SamplePipeline(gt, bbox_util, path_prefix, image_size, augment, sizes=sizes,
                                       **options)
        if skip_bad_images:  # unreadable images leave now, so that no batch is empty
            self.train_keys = self.pipeline.readable(self.train_keys, "training") if self.train_keys else []
            self.val_keys = self.pipeline.readable(self.val_keys, "validation") if self.val_keys else []
            self.train_batches, self.val_batches = len(self.train_keys), len(self.val_keys)
        self.rng = np.random.default_rng(seed)

    def generate(self, train=True):
        keys = self.train_keys if train else self.val_keys
        if len(keys) < self.batch_size:
            raise ValueError(f"{len(keys)} {'training' if train else 'validation'} images "
                             f"cannot fill a batch of {self.batch_size}")
        while True:
            order = self.rng.permutation(len(keys))
            for start in range(0, len(keys) - self.batch_size + 1, self.batch_size):
                batch_keys = [keys[i] for i in order[start:start + self.batch_size]]
                rngs = self.rng.spawn(len(batch_keys))
                yield self.pipeline.batch(batch_keys, rngs, train, self.skip_bad_images)


def _pydataset_base():
    import keras

    return keras.utils.PyDataset


class SSDDataset(_pydataset_base()):
    """The training pipeline as a ``keras.utils.PyDataset``, for ``model.fit``.

    Batches load in parallel with ``workers`` threads (or processes with
    ``use_multiprocessing=True``). Each sample's randomness comes from
    ``(seed, epoch, index)``, so a run is reproducible whatever the number of
    workers. Threads share the GIL, which the per-image work holds about a
    quarter of the time (the rest is in Pillow and NumPy), so two threads give
    about 1.5-1.7x one; processes do not share it, and a batch made in a
    worker process travels back as a :class:`CompactBatch` (the images
    through a temporary file, the targets' few non-background rows in the
    pipe), which ``model.fit`` receives as the same arrays.
    bench/bench_pipeline.py measures both.

    Args:
        gt, bbox_util, path_prefix, image_size: as for :class:`Generator`.
        keys: the image keys of this part (training or validation).
        batch_size: images per batch.
        train: augment and reshuffle each epoch; ``False`` for validation
            (fixed order, no augmentation).
        augment: ``"original"``, ``"paper"`` or ``None``.
        seed: base seed.
        drop_last: leave out the last partial batch (default: keep it, so an
            epoch sees every image once).
        skip_bad_images: warn and skip an unreadable image instead of raising.
            Images whose header cannot be read leave ``keys`` here, with one
            warning (:meth:`SamplePipeline.readable`), so no batch is empty
            and the batches, shards and steps are those of the readable keys;
            an image that fails later, when loaded, is left out of its batch.
        workers, use_multiprocessing, max_queue_size: ``PyDataset``'s.
        sizes: optional ``{key: (width, height)}`` of the annotations, for the
            EXIF orientation check (see :class:`SamplePipeline`).
        num_shards, shard_index: load only the ``shard_index``-th of
            ``num_shards`` equal parts of each batch of ``batch_size`` (the
            global batch of a multi-process run, see :mod:`ssd300.distribute`;
            needs ``drop_last`` and ``batch_size`` a multiple of ``num_shards``).
        steps_per_epoch: at most this many batches per epoch (each epoch's
            shuffle picks them anew). ``model.fit``'s own ``steps_per_epoch``
            would instead carry one pass over the data across epochs, which a
            resumed run cannot reproduce.
        **augment_options: arguments of the augmentation policy.
    """

    def __init__(self, gt, bbox_util, path_prefix, keys, image_size, batch_size=8, train=True,
                 augment="original", seed=0, drop_last=False, skip_bad_images=False,
                 workers=1, use_multiprocessing=False, max_queue_size=10, sizes=None,
                 num_shards=1, shard_index=0, steps_per_epoch=None, **augment_options):
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing,
                         max_queue_size=max_queue_size)
        check_loader_arguments(gt, batch_size, {"dataset": keys})
        self.keys = list(keys)
        if not self.keys:
            raise ValueError("SSDDataset needs at least one key")
        self.batch_size = int(batch_size)
        self.train = train
        self.seed = seed
        self.drop_last = drop_last
        self.skip_bad_images = skip_bad_images
        self.epoch = 0
        self.steps_per_epoch = steps_per_epoch
        self._epoch_order = (None, None)
        self.num_shards, self.shard_index = int(num_shards), int(shard_index)
        if not 0 <= self.shard_index < self.num_shards or self.batch_size % self.num_shards \
                or (self.num_shards > 1 and not drop_last):
            raise ValueError(f"shard {shard_index} of {num_shards} needs 0 <= shard_index < num_shards, "
                             f"drop_last and batch_size ({batch_size}) a multiple of num_shards")
        if sizes is not None:
            wanted = set(self.keys)
            sizes = {k: v for k, v in sizes.items() if k in wanted}
        self.pipeline = SamplePipeline(gt, bbox_util, path_prefix, image_size,
                                       augment if train else None, sizes=sizes, **augment_options)
        if skip_bad_images:
            # Before anything counts the keys: __len__, the order and the shards follow them.
            self.keys = self.pipeline.readable(self.keys, "training" if train else "validation")
        self._pid = os.getpid()
        if self._pid not in _CLEANING:  # files of batches that worker processes made but never sent
            _CLEANING.add(self._pid)
            remove_stale_batch_files()
            atexit.register(remove_batch_files, self._pid)

    def __len__(self):
        n = len(self.keys) / self.batch_size
        batches = max(1, math.floor(n)) if self.drop_last else math.ceil(n)
        return min(batches, self.steps_per_epoch) if self.steps_per_epoch else batches

    def _order(self):
        if not self.train:
            return np.arange(len(self.keys))
        if self._epoch_order[0] != self.epoch:
            self._epoch_order = (self.epoch,
                                 np.random.default_rng([self.seed, self.epoch]).permutation(len(self.keys)))
        return self._epoch_order[1]

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches")
        positions = self.shard_of(self._order()[index * self.batch_size:(index + 1) * self.batch_size])
        keys = [self.keys[i] for i in positions]
        rngs = [np.random.default_rng([self.seed, self.epoch, int(i)]) for i in positions]
        batch = self.pipeline.batch(keys, rngs, self.train, self.skip_bad_images)
        if os.getpid() != self._pid and multiprocessing.current_process().daemon:
            # A worker process of model.fit's pool: the batch is pickled back.
            return CompactBatch(*batch, self.pipeline.empty_target, self._pid)
        return batch

    def shard_of(self, positions):
        """This shard's part of a batch's key positions: the ``shard_index``-th of ``num_shards``."""
        size = len(positions) // self.num_shards
        return positions[self.shard_index * size:(self.shard_index + 1) * size]

    def on_epoch_end(self):
        self.epoch += 1
