"""PASCAL VOC annotations: parsing XML safely, class lists, and the ImageSets splits."""

import os
import warnings
from dataclasses import dataclass

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml import ElementTree
from xml.etree.ElementTree import ParseError

from .errors import UserError

#: The 20 PASCAL VOC classes in the devkit's order (label 1 ... 20; 0 is background).
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


class AnnotationError(UserError):
    """An annotation file that cannot be used; the message names the file and the problem."""


@dataclass
class Annotation:
    """One parsed VOC annotation file.

    Attributes:
        filename: the image file name (the ``<filename>`` tag).
        width, height: image size in pixels.
        boxes: ``(N, 4)`` float pixel ``xmin, ymin, xmax, ymax`` as written in
            the XML (VOC: 1-based, inclusive).
        labels: ``(N,)`` int class indices, 1-based into the class list.
        difficult: ``(N,)`` bool.
    """

    filename: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


def _text(node, tag, path, what):
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise AnnotationError(f"{path}: missing <{tag}> in {what}")
    return child.text.strip()


def _number(node, tag, path, what):
    value = _text(node, tag, path, what)
    try:
        return float(value)
    except ValueError:
        raise AnnotationError(f"{path}: <{tag}> in {what} is not a number: {value!r}") from None


def parse_annotation(path, classes=VOC_CLASSES, on_error="raise"):
    """Parse one VOC XML file.

    XML is read with defusedxml: entity expansion and external entities are
    refused.

    Args:
        path: the ``.xml`` file.
        classes: class names; label ``i + 1`` is ``classes[i]``.
        on_error: ``"raise"`` an :class:`AnnotationError` for a bad object, or
            ``"warn"`` and leave that object out. A file-level problem (bad
            XML, missing or zero size) always raises.

    Returns:
        :class:`Annotation`.
    """
    path = os.fspath(path)
    try:
        root = ElementTree.parse(path).getroot()
    except DefusedXmlException as e:
        raise AnnotationError(f"{path}: refused unsafe XML ({type(e).__name__}: {e})") from None
    except ParseError as e:
        raise AnnotationError(f"{path}: not well-formed XML ({e})") from None
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read ({e.strerror})") from None

    size = root.find("size")
    if size is None:
        raise AnnotationError(f"{path}: missing <size>")
    width = _number(size, "width", path, "<size>")
    height = _number(size, "height", path, "<size>")
    if width <= 0 or height <= 0:
        raise AnnotationError(f"{path}: image size must be positive, got {width:g}x{height:g}")
    filename_node = root.find("filename")
    if filename_node is not None and filename_node.text and filename_node.text.strip():
        filename = filename_node.text.strip()
    else:
        filename = os.path.splitext(os.path.basename(path))[0] + ".jpg"

    class_index = {name: i + 1 for i, name in enumerate(classes)}
    boxes, labels, difficult = [], [], []
    for number, obj in enumerate(root.findall("object"), start=1):
        what = f"object {number}"
        try:
            name = _text(obj, "name", path, what)
            if name not in class_index:
                raise AnnotationError(
                    f"{path}: {what} has unknown class {name!r} (known: {', '.join(classes)})")
            box_node = obj.find("bndbox")
            if box_node is None:
                raise AnnotationError(f"{path}: missing <bndbox> in {what}")
            box = [_number(box_node, t, path, f"{what} <bndbox>")
                   for t in ("xmin", "ymin", "xmax", "ymax")]
            if box[2] <= box[0] or box[3] <= box[1]:
                raise AnnotationError(f"{path}: {what} ({name}) has an empty box {box}: "
                                      "need xmax > xmin and ymax > ymin")
            if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
                raise AnnotationError(f"{path}: {what} ({name}) box {box} lies outside the "
                                      f"{width:g}x{height:g} image")
        except AnnotationError as e:
            if on_error == "warn":
                warnings.warn(f"{e}; object skipped", stacklevel=2)
                continue
            raise
        diff = obj.find("difficult")
        boxes.append(box)
        labels.append(class_index[name])
        difficult.append(diff is not None and (diff.text or "0").strip() == "1")
    return Annotation(filename, int(width), int(height),
                      np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                      np.asarray(labels, dtype=np.int64), np.asarray(difficult, dtype=bool))


def read_classes_file(path):
    """Class names, one per line, from a ``classes.txt``."""
    with open(path, encoding="utf8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise AnnotationError(f"{path}: no class names")
    return tuple(names)


class XML_preprocessor:  # noqa: N801  (the original's name)
    """Read a folder of VOC XML annotations, as the originals' ``XML_preprocessor``.

    Args:
        data_path: the ``Annotations`` folder (with or without a trailing
            slash). Files not ending in ``.xml`` are ignored.
        classes: class names, in label order. ``None`` uses a ``classes.txt``
            beside the ``Annotations`` folder (as the synthetic dataset
            writes) when there is one, else the 20 VOC classes.
        skip_difficult: leave objects marked ``difficult`` out of ``data``
            (the original kept them; evaluation wants them, see
            :attr:`difficult`).
        on_error: ``"raise"`` or ``"warn"``, see :func:`parse_annotation`.
        progress: show a progress bar; ``None`` shows one for more than 1000
            files.
        ids: only these annotation ids (file names without ``.xml``), e.g.
            from :func:`read_split`.

    Attributes:
        data: ``{image file name: (num_objects, 4 + num_classes)}`` float
            arrays: ``xmin, ymin, xmax, ymax`` divided by the image width and
            height, then a one-hot class row. ``(0, 4 + num_classes)`` for an
            image without objects.
        difficult: ``{image file name: (num_objects,) bool}`` matching the
            rows of ``data``.
        annotations: ``{image file name: Annotation}`` with all objects.
        classes: the class names used.
        num_classes: ``len(classes)`` (without background).
    """

    def __init__(self, data_path, classes=None, skip_difficult=False, on_error="raise",
                 progress=None, ids=None):
        self.path_prefix = os.fspath(data_path)
        if not os.path.isdir(self.path_prefix):
            raise AnnotationError(f"{self.path_prefix}: annotation folder not found")
        if classes is None:
            beside = os.path.join(os.path.dirname(os.path.normpath(self.path_prefix)), "classes.txt")
            classes = read_classes_file(beside) if os.path.isfile(beside) else VOC_CLASSES
        self.classes = tuple(classes)
        self.num_classes = len(self.classes)
        self.skip_difficult = skip_difficult
        self.on_error = on_error
        self.data = {}
        self.difficult = {}
        self.annotations = {}
        self._preprocess_XML(progress, ids)

    def _preprocess_XML(self, progress, ids):  # noqa: N802  (the original's name)
        if ids is None:
            names = sorted(f for f in os.listdir(self.path_prefix) if f.lower().endswith(".xml"))
        else:
            names = [f"{i}.xml" for i in ids]
        if progress is None:
            progress = len(names) > 1000
        if progress:
            from tqdm import tqdm

            names = tqdm(names, desc="annotations", unit="file")
        eye = np.eye(self.num_classes)
        for name in names:
            ann = parse_annotation(os.path.join(self.path_prefix, name), self.classes, self.on_error)
            keep = ~ann.difficult if self.skip_difficult else np.ones(len(ann.labels), bool)
            scale = np.array([ann.width, ann.height, ann.width, ann.height], dtype=np.float64)
            rows = np.concatenate([ann.boxes[keep] / scale, eye[ann.labels[keep] - 1]], axis=1)
            self.data[ann.filename] = rows.reshape(-1, 4 + self.num_classes)
            self.difficult[ann.filename] = ann.difficult[keep]
            self.annotations[ann.filename] = ann

    def _to_one_hot(self, name):
        """The one-hot row of a class name (the original's helper); unknown names raise."""
        if name not in self.classes:
            raise AnnotationError(f"unknown class {name!r}")
        one_hot = np.zeros(self.num_classes)
        one_hot[self.classes.index(name)] = 1
        return one_hot


def read_split(voc_root, split):
    """Image ids listed in ``ImageSets/Main/<split>.txt`` of a VOC folder.

    Raises:
        AnnotationError: the list is missing, naming the path.
    """
    path = os.path.join(os.fspath(voc_root), "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(path):
        raise AnnotationError(f"{path}: split list not found")
    with open(path, encoding="utf8") as f:
        return [line.split()[0] for line in f if line.strip()]


def random_split(keys, train_fraction=0.7, seed=None):
    """The original notebook's random split of keys: ``(train_keys, val_keys)``."""
    keys = sorted(keys)
    order = np.random.default_rng(seed).permutation(len(keys))
    num_train = int(round(train_fraction * len(keys)))
    return [keys[i] for i in order[:num_train]], [keys[i] for i in order[num_train:]]
