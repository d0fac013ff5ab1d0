"""Training batches: the originals' ``Generator`` and a ``keras.utils.PyDataset``.

Both share :class:`SamplePipeline`: read an image (Pillow), augment it
(:mod:`ssd300.augment`), resize, and encode its boxes with
``BBoxUtility.assign_boxes``. Batches are ``(preprocess_input(images),
targets)``: float32 ``(batch, H, W, 3)`` in Caffe mode (BGR, mean subtracted)
and float32 ``(batch, num_priors, 4 + num_classes + 8)``.
"""

import math
import os
import warnings

import numpy as np

from .augment import OriginalAugmentation, PaperAugmentation
from .image_io import ImageError, load_image, preprocess_input, resize


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
            or an object called as ``augment(image, boxes, rng)``.
        **augment_options: arguments of the augmentation policy.
    """

    def __init__(self, gt, bbox_util, path_prefix, image_size, augment="original", **augment_options):
        self.gt = gt
        self.bbox_util = bbox_util
        self.path_prefix = os.fspath(path_prefix)
        # The original concatenated path_prefix + key; a folder given without
        # its trailing separator works too.
        if self.path_prefix and not self.path_prefix.endswith(("/", os.sep)) \
                and os.path.isdir(self.path_prefix):
            self.path_prefix += os.sep
        self.image_size = tuple(image_size)[:2]
        if augment == "original":
            augment = OriginalAugmentation(self.image_size, **augment_options)
        elif augment == "paper":
            augment = PaperAugmentation(self.image_size, **augment_options)
        elif augment is not None and not callable(augment):
            raise ValueError(f"augment must be 'original', 'paper', None or callable, got {augment!r}")
        self.augment = augment

    def image_path(self, key):
        return self.path_prefix + key

    def load(self, key, rng, train=True):
        """``(image, target)``: float32 ``(H, W, 3)`` RGB in [0, 255] and the encoded target.

        Raises:
            ImageError: the image is missing or unreadable (names the file).
        """
        if key not in self.gt:
            raise KeyError(f"{key}: no ground truth for this image")
        image = load_image(self.image_path(key))
        boxes = np.asarray(self.gt[key], dtype=np.float64)
        if train and self.augment is not None:
            image, boxes = self.augment(image, boxes, rng)
        else:
            image = resize(image, self.image_size).astype(np.float32)
        return image, self.bbox_util.assign_boxes(boxes, dtype=np.float32)

    def batch(self, keys, rngs, train, skip_bad_images=False):
        """``(preprocess_input(images), targets)`` of the keys' samples, float32."""
        images = np.empty((len(keys),) + self.image_size + (3,), np.float32)
        targets = None
        count = 0
        for key, rng in zip(keys, rngs):
            try:
                image, target = self.load(key, rng, train)
            except ImageError as e:
                if not skip_bad_images:
                    raise
                warnings.warn(f"{e}; image skipped", stacklevel=2)
                continue
            if targets is None:
                targets = np.empty((len(keys),) + target.shape, np.float32)
            images[count] = preprocess_input(image)
            targets[count] = target
            count += 1
        if not count:
            raise ImageError(f"no readable image in batch ({', '.join(map(str, keys))})")
        return images[:count], targets[:count]


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
        skip_bad_images: warn and skip an unreadable image instead of raising.

    ``generate(train)`` yields ``(preprocess_input(images), targets)`` forever,
    reshuffling the keys each pass; like the original, only full batches are
    yielded. For ``model.fit`` with parallel loading use :class:`SSDDataset`.
    """

    def __init__(self, gt, bbox_util, batch_size, path_prefix, train_keys, val_keys, image_size,
                 saturation_var=0.5, brightness_var=0.5, contrast_var=0.5, lighting_std=0.5,
                 hflip_prob=0.5, vflip_prob=0.5, do_crop=True, crop_area_range=[0.75, 1.0],
                 aspect_ratio_range=[3. / 4., 4. / 3.], augment="original", seed=None,
                 skip_bad_images=False):
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
        self.pipeline = SamplePipeline(gt, bbox_util, path_prefix, image_size, augment, **options)
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
    workers.

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
        workers, use_multiprocessing, max_queue_size: ``PyDataset``'s.
        **augment_options: arguments of the augmentation policy.
    """

    def __init__(self, gt, bbox_util, path_prefix, keys, image_size, batch_size=8, train=True,
                 augment="original", seed=0, drop_last=False, skip_bad_images=False,
                 workers=1, use_multiprocessing=False, max_queue_size=10, **augment_options):
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing,
                         max_queue_size=max_queue_size)
        self.keys = list(keys)
        if not self.keys:
            raise ValueError("SSDDataset needs at least one key")
        self.batch_size = int(batch_size)
        self.train = train
        self.seed = seed
        self.drop_last = drop_last
        self.skip_bad_images = skip_bad_images
        self.epoch = 0
        self._epoch_order = (None, None)
        self.pipeline = SamplePipeline(gt, bbox_util, path_prefix, image_size,
                                       augment if train else None, **augment_options)

    def __len__(self):
        n = len(self.keys) / self.batch_size
        return max(1, math.floor(n)) if self.drop_last else math.ceil(n)

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
        positions = self._order()[index * self.batch_size:(index + 1) * self.batch_size]
        keys = [self.keys[i] for i in positions]
        rngs = [np.random.default_rng([self.seed, self.epoch, int(i)]) for i in positions]
        return self.pipeline.batch(keys, rngs, self.train, self.skip_bad_images)

    def on_epoch_end(self):
        self.epoch += 1
