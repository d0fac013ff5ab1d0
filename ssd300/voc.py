"""PASCAL VOC annotations: parsing XML safely, class lists, and the ImageSets splits."""

import math
import os
import warnings
from collections import Counter
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
            the XML (VOC: 1-based, inclusive, so ``xmin == xmax`` is a box one
            pixel wide).
        labels: ``(N,)`` int class indices, 1-based into the class list.
        difficult: ``(N,)`` bool.
    """

    filename: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


def annotation_sizes(annotations):
    """``{key: (width, height)}`` of ``{key: voc.Annotation}`` (``XML_preprocessor.annotations``,
    ``CocoDataset.annotations``): the ``sizes`` argument of :class:`SamplePipeline`."""
    return {key: (ann.width, ann.height) for key, ann in annotations.items()}


def _text(node, tag, path, what):
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise AnnotationError(f"{path}: missing <{tag}> in {what}")
    return child.text.strip()


def _number(node, tag, path, what):
    value = _text(node, tag, path, what)
    try:
        number = float(value)
    except ValueError:
        raise AnnotationError(f"{path}: <{tag}> in {what} is not a number: {value!r}") from None
    # float() accepts "nan", "inf" and "1e999"; none is a pixel coordinate or size.
    if not math.isfinite(number):
        raise AnnotationError(f"{path}: <{tag}> in {what} is not a finite number: {value!r}")
    return number


#: The ``<difficult>`` texts understood (after stripping and lower-casing): VOC
#: writes ``0`` / ``1``; other tools write ``true`` / ``false`` or ``1.0``.
_DIFFICULT_VALUES = {"0": False, "1": True, "0.0": False, "1.0": True, "false": False, "true": True}


def _difficult(obj, path, what):
    """The ``<difficult>`` flag of an ``<object>``; absent or empty is ``False``.

    Raises:
        AnnotationError: any text other than those of
            :data:`_DIFFICULT_VALUES` (reading it as 0 would turn an
            ignored object into a positive).
    """
    node = obj.find("difficult")
    text = "" if node is None or node.text is None else node.text.strip()
    if not text:
        return False
    flag = _DIFFICULT_VALUES.get(text.lower())
    if flag is None:
        raise AnnotationError(f"{path}: <difficult> in {what} is {text!r}: expected 0, 1, true or false")
    return flag


def image_path_problem(name):
    """Why an image file name from an annotation would not stay inside its image folder.

    A name is used relative to the image folder (``JPEGImages``), so it must
    not be absolute (``/x``, ``\\x``, ``C:x``) nor climb out with ``..``.
    Sub-folders (``sub/x.jpg``) are allowed.

    Args:
        name: the file name as written in the annotation.

    Returns:
        ``None`` for a usable name, else a short reason.
    """
    if "\0" in name:
        return f"file name {name!r} contains a NUL character"
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        return f"file name {name!r} is an absolute path; it must be relative to the image folder"
    if ".." in parts:
        return f"file name {name!r} points outside the image folder"
    return None


def parse_annotation(path, classes=VOC_CLASSES, on_error="raise"):
    """Parse one VOC XML file.

    XML is read with defusedxml: entity expansion and external entities are
    refused.

    Args:
        path: the ``.xml`` file.
        classes: class names; label ``i + 1`` is ``classes[i]``.
        on_error: ``"raise"`` an :class:`AnnotationError` for a bad object, or
            ``"warn"`` and leave that object out. A file-level problem (bad
            XML, missing, zero or non-finite size, a ``<filename>`` that
            leaves the image folder) always raises.

    Returns:
        :class:`Annotation`.

    Boxes follow VOC's 1-based inclusive convention: ``xmin == xmax`` (or
    ``ymin == ymax``) is a box one pixel wide (or high), accepted as the
    devkit and :func:`ssd300.convert.coco_to_voc` write it; only ``xmax <
    xmin`` or ``ymax < ymin`` is an empty box. ``XML_preprocessor``
    normalises by ``x / width`` as the originals did, so such a box becomes
    zero-wide there: it matches no prior (IoU 0), so it adds no positive to
    the training target (``BBoxUtility.assign_boxes`` stays finite), while
    evaluation scores it as the one-pixel box it is.

    ``<difficult>`` may be ``0``, ``1``, ``true``, ``false``, ``0.0`` or
    ``1.0`` (any case, surrounding spaces); absent or empty means 0.

    Raises:
        AnnotationError: naming the file and the problem: unsafe or
            malformed XML, a missing or non-positive ``<size>``, a
            coordinate that is not a finite number; and, unless
            ``on_error="warn"``, an unknown class, an empty box, a box
            outside the image, or any other ``<difficult>`` text.
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
    # Sizes are pixel counts; some tools write "500.0". Rounded here, so that
    # the boxes are checked against the size that later normalises them.
    if round(width) < 1 or round(height) < 1:
        raise AnnotationError(f"{path}: image size must be positive, got {width:g}x{height:g}")
    width, height = int(round(width)), int(round(height))
    filename_node = root.find("filename")
    if filename_node is not None and filename_node.text and filename_node.text.strip():
        filename = filename_node.text.strip()
        problem = image_path_problem(filename)
        if problem:
            raise AnnotationError(f"{path}: <filename>: {problem}")
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
            # Inclusive pixel boxes: xmin == xmax is one pixel wide, not empty.
            if box[2] < box[0] or box[3] < box[1]:
                raise AnnotationError(f"{path}: {what} ({name}) has an empty box {box}: "
                                      "need xmax >= xmin and ymax >= ymin")
            if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
                raise AnnotationError(f"{path}: {what} ({name}) box {box} lies outside the "
                                      f"{width:g}x{height:g} image")
            is_difficult = _difficult(obj, path, f"{what} ({name})")
        except AnnotationError as e:
            if on_error == "warn":
                warnings.warn(f"{e}; object skipped", stacklevel=2)
                continue
            raise
        boxes.append(box)
        labels.append(class_index[name])
        difficult.append(is_difficult)
    return Annotation(filename, width, height,
                      np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                      np.asarray(labels, dtype=np.int64), np.asarray(difficult, dtype=bool))


def _read_lines(path, what):
    """The stripped non-empty lines of a UTF-8 text file; :class:`AnnotationError` naming it otherwise.

    A leading UTF-8 byte order mark (Windows Notepad's "UTF-8 with BOM",
    PowerShell 5's ``Out-File``) is dropped, as ``json`` and the XML parser
    here do; kept, it would stick, unseen, to the first name or id.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            return [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: {what} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read {what} ({e.strerror})") from None


def check_classes(classes, source="class list"):
    """``classes`` as a tuple of names; repeated or empty lists raise :class:`AnnotationError`.

    A repeated name would give one class two labels, and the annotations
    would use only one of them.
    """
    if isinstance(classes, str):  # one name, read letter by letter
        raise AnnotationError(f"{source}: a list of class names is needed, got the string {classes!r}")
    classes = tuple(classes)
    if not classes:
        raise AnnotationError(f"{source}: no class names")
    repeated = [name for name, count in Counter(classes).items() if count > 1]
    if repeated:
        raise AnnotationError(f"{source}: class names repeated: {', '.join(map(repr, repeated))}")
    return classes


def read_classes_file(path):
    """Class names, one per line, from a ``classes.txt``.

    Raises:
        AnnotationError: the file is missing, unreadable, not UTF-8, empty,
            or repeats a name.
    """
    path = os.fspath(path)
    return check_classes(_read_lines(path, "class list"), path)


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
        on_error: ``"raise"`` an :class:`AnnotationError` for the first
            problem, or ``"warn"``, leave the bad object out (see
            :func:`parse_annotation`) and a file that cannot be used at all
            (bad XML, a missing file named in ``ids``, a bad size or file
            name, an image already annotated by another file) too.
        progress: show a progress bar; ``None`` shows one for more than 1000
            files.
        ids: only these annotation ids (file names without ``.xml``), e.g.
            from :func:`read_split`.

    Attributes:
        data: ``{image file name: (num_objects, 4 + num_classes)}`` float
            arrays: ``xmin, ymin, xmax, ymax`` divided by the image width and
            height (as the originals: a one-pixel box, ``xmin == xmax``, is
            zero-wide here and matches no prior), then a one-hot class row.
            ``(0, 4 + num_classes)`` for an image without objects.
        difficult: ``{image file name: (num_objects,) bool}`` matching the
            rows of ``data``.
        annotations: ``{image file name: Annotation}`` with all objects.
        classes: the class names used.
        num_classes: ``len(classes)`` (without background).
        skipped: ``{annotation file: reason}`` of the files left out under
            ``on_error="warn"``.

    Raises:
        AnnotationError: the folder is missing; a bad annotation file (under
            ``on_error="raise"``); two files annotating the same image.
    """

    def __init__(self, data_path, classes=None, skip_difficult=False, on_error="raise",
                 progress=None, ids=None):
        self.path_prefix = os.fspath(data_path)
        if not os.path.isdir(self.path_prefix):
            raise AnnotationError(f"{self.path_prefix}: annotation folder not found")
        if classes is None:
            beside = os.path.join(os.path.dirname(os.path.normpath(self.path_prefix)), "classes.txt")
            classes = read_classes_file(beside) if os.path.isfile(beside) else VOC_CLASSES
        if on_error not in ("raise", "warn"):
            raise ValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
        self.classes = check_classes(classes)
        self.num_classes = len(self.classes)
        self.skip_difficult = skip_difficult
        self.on_error = on_error
        self.data = {}
        self.difficult = {}
        self.annotations = {}
        self.skipped = {}
        self._preprocess_XML(progress, ids)

    def _preprocess_XML(self, progress, ids):  # noqa: N802  (the original's name)
        if ids is None:
            names = sorted(f for f in os.listdir(self.path_prefix) if f.lower().endswith(".xml"))
            inside = os.path.join(self.path_prefix, "Annotations")
            if not names and os.path.isdir(inside):  # the VOC folder itself was given
                raise AnnotationError(f"{self.path_prefix}: no .xml files here; the annotations are in {inside}")
        else:
            names = [f"{i}.xml" for i in ids]
        if progress is None:
            progress = len(names) > 1000
        if progress:
            from tqdm import tqdm

            names = tqdm(names, desc="annotations", unit="file")
        eye = np.eye(self.num_classes)
        source = {}  # image file name -> the annotation file that gave it
        for name in names:
            path = os.path.join(self.path_prefix, name)
            try:
                ann = parse_annotation(path, self.classes, self.on_error)
                if ann.filename in source:
                    # The second file would silently replace the first one's boxes.
                    raise AnnotationError(f"{path}: annotates image {ann.filename!r}, as "
                                          f"{source[ann.filename]} does")
            except AnnotationError as e:
                if self.on_error == "raise":
                    raise
                warnings.warn(f"{e}; file skipped", stacklevel=3)
                self.skipped[path] = str(e)
                continue
            source[ann.filename] = path
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

    Only the first word of a line counts (the per-class lists add a flag).
    An id listed twice is kept once, with a warning: training on it twice
    would weigh that image double without anyone having asked for it.

    Returns:
        The ids in file order, each once.

    Raises:
        AnnotationError: naming the path: the list is missing, not UTF-8,
            empty, or has an id that is not a plain file name (``../x``).
    """
    path = os.path.join(os.fspath(voc_root), "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(path):
        raise AnnotationError(f"{path}: split list not found")
    ids = [line.split()[0] for line in _read_lines(path, "split list")]
    if not ids:
        raise AnnotationError(f"{path}: split list is empty")
    for number, image_id in enumerate(ids, start=1):
        if any(c in image_id for c in "/\\\0") or image_id in (".", ".."):
            raise AnnotationError(f"{path}: entry {number} {image_id!r} is not a plain id "
                                  "(ids name files in Annotations/ and JPEGImages/)")
    unique = list(dict.fromkeys(ids))
    if len(unique) < len(ids):
        repeated = [i for i, count in Counter(ids).items() if count > 1]
        shown = ", ".join(repeated[:5]) + (", ..." if len(repeated) > 5 else "")
        warnings.warn(f"{path}: {len(ids) - len(unique)} repeated ids ({shown}) are used once",
                      stacklevel=2)
    return unique


def random_split(keys, train_fraction=0.7, seed=None):
    """The original notebook's random split of keys: ``(train_keys, val_keys)``."""
    keys = sorted(keys)
    order = np.random.default_rng(seed).permutation(len(keys))
    num_train = int(round(train_fraction * len(keys)))
    return [keys[i] for i in order[:num_train]], [keys[i] for i in order[num_train:]]
