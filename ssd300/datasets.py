"""Finding and reading a training dataset, and splitting it into training and validation parts.

A dataset is anything with ``data`` (``{image key: (N, 4 + C)}`` normalised
boxes and one-hot classes without the background, as
``XML_preprocessor.data``), ``classes`` and ``annotations`` (pixel boxes
for evaluation); :class:`TrainingData` adds the image folder and the split.
"""

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from .coco import ROBOFLOW_ANNOTATIONS, find_coco_split, is_coco_root, load_coco
from .errors import UserError
from .voc import XML_preprocessor, random_split, read_split

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


@dataclass
class TrainingData:
    """A dataset split for training.

    Attributes:
        dataset: the reader (``XML_preprocessor`` or a COCO dataset).
        image_dir: the folder the keys of ``dataset.data`` are relative to.
        train_keys, val_keys: image keys of each part.
    """

    dataset: object
    image_dir: str
    train_keys: list
    val_keys: list

    @property
    def classes(self):
        return tuple(self.dataset.classes)

    def fingerprint(self):
        """A digest of the split: both parts' keys in order, their boxes and classes, the class names.

        Equal for the same data read from another folder (a copy, or a moved
        one), so that ``--resume`` can tell a dataset that moved from other data.
        """
        digest = hashlib.sha256(json.dumps([list(self.classes), [str(k) for k in self.train_keys],
                                            [str(k) for k in self.val_keys]]).encode())
        for key in (*self.train_keys, *self.val_keys):
            digest.update(np.ascontiguousarray(self.dataset.data[key], dtype=np.float64).tobytes())
        return digest.hexdigest()


def check_voc_root(root, split):
    """Raise :class:`UserError` with the expected layout unless ``root`` is VOC-shaped."""
    needed = ["Annotations", "JPEGImages"]
    if split != "all":
        needed.append(os.path.join("ImageSets", "Main", f"{split}.txt"))
    missing = [p for p in needed if not os.path.exists(os.path.join(root, p))]
    if missing:
        what = "does not exist" if not os.path.isdir(root) else f"lacks {', '.join(missing)}"
        raise UserError(f"{root} {what}.\n\n" + VOC_LAYOUT.format(root=root))


def read_voc(root, split, classes=None, skip_difficult=False, on_error="raise"):
    """The ``XML_preprocessor`` of a VOC folder's split (``"all"``: every annotation file).

    Raises:
        UserError: the folder is not VOC-shaped; ``AnnotationError`` (a
            ``UserError``) for a bad annotation.
    """
    check_voc_root(root, split)
    ids = None if split == "all" else read_split(root, split)
    return XML_preprocessor(os.path.join(root, "Annotations"), classes=classes, ids=ids,
                            skip_difficult=skip_difficult, on_error=on_error)


def split_for_training(dataset, image_dir, val_fraction, seed, source, skip_difficult=False):
    """Hold out ``val_fraction`` of the images (at least one) for validation.

    Args:
        dataset: the reader (``data``, ``annotations``).
        image_dir: the folder of the images.
        val_fraction: part of the images held out, in ``[0, 1)``.
        seed: seed of the split.
        source: names the dataset in messages.
        skip_difficult: the reader left difficult objects out (named in the
            message when nothing is left to train on).

    Returns:
        :class:`TrainingData`.

    Raises:
        UserError: no object to train on, fewer than 2 images, or a
            ``val_fraction`` that leaves no training image (it is refused
            rather than rounded down, so that the split asked for is the one
            trained on).
    """
    keys = sorted(dataset.data)
    if not sum(len(dataset.data[k]) for k in keys):
        difficult = sum(int(np.count_nonzero(a.difficult)) for a in dataset.annotations.values())
        why = ""
        if skip_difficult:
            # A COCO reader leaves out the images whose objects were all skipped, so it counts none.
            why = (f"; --skip-difficult left out the {difficult} difficult objects" if difficult
                   else "; --skip-difficult leaves out the difficult objects")
        raise UserError(f"{source}: no object to train on ({len(keys)} images with annotations{why})")
    if len(keys) < 2:
        raise UserError(f"{source}: {len(keys)} images with annotations; need at least 2")
    train_keys, val_keys = random_split(keys, 1 - val_fraction, seed=seed)
    if not train_keys:
        most = (len(keys) - 0.5) / len(keys)  # random_split rounds the training part to the nearest
        raise UserError(f"{source}: val-fraction {val_fraction:g} of {len(keys)} images leaves no "
                        f"training image (use less than {most:.3g})")
    if not val_keys:
        train_keys, val_keys = train_keys[:-1], train_keys[-1:]
    if not sum(len(dataset.data[k]) for k in train_keys):
        raise UserError(f"{source}: the {len(train_keys)} training images hold no object (the "
                        f"{len(val_keys)} validation images hold them all); lower the val-fraction")
    return TrainingData(dataset, image_dir, train_keys, val_keys)


def coco_source(path, images=None, split="train"):
    """``(annotation_file, image_dir)`` of a COCO JSON file, or of a split of a COCO dataset folder.

    Args:
        path: a COCO JSON file; a folder that holds Roboflow's
            ``_annotations.coco.json`` beside its images (one split of an
            export); or a dataset folder in Roboflow's export layout
            (``train/``, ``valid/``, ``test/``, each with
            ``_annotations.coco.json`` and its images) or COCO's own.
        images: the image folder of a JSON file (default: the file's folder).
            Refused with a folder, whose images are found with its annotations.
        split: the split of a dataset folder; VOC's ``trainval`` means
            ``train``. Unused for a file or a split folder.

    Returns:
        ``(annotation_file, image_dir)``; ``image_dir`` is never ``None``, so
        :func:`ssd300.coco.load_coco` checks that every listed image exists.

    Raises:
        UserError: ``images`` given with a folder, or the split is not found.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if images is not None:
            raise UserError(f"{path} is a dataset folder: its images are found with its annotations; "
                            f"--images {images} is only for a COCO JSON file")
        if os.path.isfile(os.path.join(path, ROBOFLOW_ANNOTATIONS)):
            return os.path.join(path, ROBOFLOW_ANNOTATIONS), path
        return find_coco_split(path, "train" if split == "trainval" else split)
    return path, os.fspath(images) if images is not None else (os.path.dirname(path) or ".")


def load_training_data(config):
    """The dataset that a :class:`ssd300.training.TrainConfig` names, split for training.

    ``config.coco_json`` (a file, or a COCO dataset folder) is read with
    :func:`ssd300.coco.load_coco`; a ``voc_root`` that is a COCO dataset
    folder (a Roboflow export) too; otherwise the VOC folder's split.

    Raises:
        UserError: a bad dataset (see :func:`split_for_training`), or a
            ``split`` other than the default given with a COCO JSON file,
            which has none.
    """
    on_error = "warn" if config.skip_bad_annotations else "raise"
    coco = config.coco_json or (config.voc_root if is_coco_root(config.voc_root) else None)
    if coco:
        # TrainConfig's default split, "trainval", is what a file stands for; another one is a
        # split the user asked for that a file cannot give.
        if config.split != "trainval" and os.path.isfile(coco):
            raise UserError(f"{coco} is a COCO JSON file, which has no splits: --split {config.split} "
                            f"is only for a dataset folder")
        annotation_file, images = coco_source(coco, config.images, config.split)
        dataset = load_coco(annotation_file, images, classes=config.classes, on_error=on_error,
                            skip_difficult=config.skip_difficult)
        return split_for_training(dataset, dataset.image_dir, config.val_fraction, config.seed,
                                  annotation_file, config.skip_difficult)
    dataset = read_voc(config.voc_root, config.split, config.classes, config.skip_difficult, on_error)
    return split_for_training(dataset, os.path.join(config.voc_root, "JPEGImages"),
                              config.val_fraction, config.seed,
                              f"{config.voc_root} (split {config.split!r})", config.skip_difficult)
