"""COCO JSON detection datasets (as COCO, Roboflow, CVAT and Label Studio export them).

:func:`load_coco` reads an annotation file and its image folder into a
:class:`CocoDataset` with the same ground truth as ``XML_preprocessor``
(``data``, ``difficult``, ``annotations``, ``classes``), so ``Generator``,
``SSDDataset``, training and the VOC evaluation work unchanged.

Coordinates. COCO boxes are ``[x, y, width, height]`` in continuous pixel
coordinates (the top-left corner of the image is ``(0, 0)``). They are turned
into the VOC convention that the rest of the library uses (1-based,
inclusive pixel indices) by::

    xmin = x + 1,  ymin = y + 1,  xmax = x + width,  ymax = y + height

the inverse of ``x = xmin - 1, width = xmax - xmin + 1`` (Detectron's VOC
loader; :mod:`ssd300.convert` writes it). With it the VOC evaluation's
``+1`` pixel IoU on the converted boxes equals the plain IoU of the COCO
boxes that pycocotools computes, and VOC XML -> COCO JSON -> VOC round trips
exactly. Roboflow's VOC -> COCO export writes ``width = xmax - xmin``
instead (measured on VOC2007 000032), so its boxes come back with ``xmax``
and ``ymax`` one pixel smaller than the original XML. A box of width (or
height) 1 becomes the one-pixel box ``xmin == xmax`` of the inclusive
convention, which the VOC reader accepts too; one under a pixel would come
out with ``xmax < xmin``, and both readers refuse it.

Crowd boxes (``iscrowd: 1``) are not training targets: they are left out of
``data`` and kept in ``annotations`` flagged ``difficult``, so the VOC
evaluation ignores detections on them as it ignores VOC's difficult objects.
An extra per-annotation key ``"difficult": 1`` (written by
:func:`ssd300.convert.voc_to_coco`) marks a VOC difficult object: it stays in
``data`` (as ``XML_preprocessor`` keeps difficult objects) and is flagged in
``difficult`` and ``annotations``.

Evaluation. Training refuses boxes of no size, under one pixel or outside
the image, but pycocotools scores every non-crowd box of the file (one that
no detection can match is a miss). ``load_coco(..., evaluation=True)``
keeps them in ``annotations`` as written, for
:mod:`ssd300.coco_eval`, and leaves them out of ``data``.

The JSON is read once; per-annotation work runs on NumPy arrays, so a 100 MB
file loads in seconds.
"""

import gc
import json
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np

from .errors import UserError
from .voc import Annotation, AnnotationError, image_path_problem

#: Pixels a box may exceed the image by (float rounding of exports); the excess is clipped.
BOX_TOLERANCE = 1.0
#: The annotation file name of a Roboflow "COCO JSON" export, one per split folder.
ROBOFLOW_ANNOTATIONS = "_annotations.coco.json"
#: Split folder names of a Roboflow export (``val`` is accepted for ``valid``).
ROBOFLOW_SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {"val": "valid", "validation": "valid", "valid": "val"}
_MAX_WARNINGS = 20


@dataclass
class CocoDataset:
    """A COCO detection dataset in the form of ``XML_preprocessor``.

    Keys of the dicts are image file names as written in the JSON
    (``file_name``), relative to ``image_dir``.

    Attributes:
        data: ``{file: (N, 4 + C) float}``: ``xmin, ymin, xmax, ymax``
            (VOC pixel convention, see the module docstring) divided by the
            image width and height, then a one-hot class row without the
            background. Crowd boxes are not in it.
        difficult: ``{file: (N,) bool}`` matching the rows of ``data``: the
            objects marked ``"difficult": 1``.
        annotations: ``{file: voc.Annotation}`` with every box, crowd ones
            included: pixel ``xmin, ymin, xmax, ymax`` (VOC convention),
            labels ``1 .. C`` and ``difficult`` = difficult or crowd.
        iscrowd: ``{file: (M,) bool}`` matching ``annotations[file]`` rows.
        areas: ``{file: (M,) float}`` the ``area`` of each annotation (its
            segmentation area in real COCO files; ``width * height`` where the
            file gives none), used by COCO's small/medium/large metrics.
        classes: class names; label ``i + 1`` is ``classes[i]``.
        category_ids: COCO category id of each class (``category_ids[i]``
            for label ``i + 1``); ``None`` for a class named in an explicit
            class list that the file has no category for.
        image_ids: ``{file: COCO image id}``.
        image_dir: the image folder.
        annotation_file: the JSON file.
        evaluation: loaded with ``load_coco(..., evaluation=True)``:
            ``annotations`` hold every box of the file as written, as
            pycocotools scores them.
    """

    data: dict
    difficult: dict
    annotations: dict
    iscrowd: dict
    areas: dict
    classes: tuple
    category_ids: tuple
    image_ids: dict
    image_dir: str
    annotation_file: str
    evaluation: bool = False

    @property
    def num_classes(self):
        """Number of classes without the background."""
        return len(self.classes)

    @property
    def path_prefix(self):
        """The image folder with a trailing separator, as ``Generator``'s ``path_prefix``."""
        return os.path.join(self.image_dir, "")


class _Problems:
    """Per-record problems: raise the first, or warn and mark the record skipped."""

    def __init__(self, path, on_error):
        if on_error not in ("raise", "warn"):
            raise ValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
        self.path = path
        self.on_error = on_error
        self.count = 0

    def report(self, what, message):
        """``what``: names the record (``annotation id 17``); ``message``: the problem."""
        text = f"{self.path}: {what}: {message}"
        if self.on_error == "raise":
            raise AnnotationError(text)
        self.count += 1
        if self.count <= _MAX_WARNINGS:
            warnings.warn(f"{text}; record skipped", stacklevel=4)

    def finish(self):
        if self.count > _MAX_WARNINGS:
            warnings.warn(f"{self.path}: {self.count - _MAX_WARNINGS} more bad records skipped "
                          f"({self.count} in all)", stacklevel=3)


def _read_json(path):
    if not os.path.exists(path):
        raise AnnotationError(f"{path}: annotation file not found")
    if os.path.isdir(path):
        raise AnnotationError(f"{path}: is a folder, expected a COCO JSON annotation file"
                              + (f" (it holds {ROBOFLOW_ANNOTATIONS})"
                                 if os.path.isfile(os.path.join(path, ROBOFLOW_ANNOTATIONS)) else ""))
    try:
        with open(path, "rb") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e})") from None
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(raw, dict):
        raise AnnotationError(f"{path}: expected a JSON object with 'images', 'annotations' and "
                              f"'categories', got a {type(raw).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in raw:
            raise AnnotationError(f"{path}: no '{key}' list: not a COCO detection file "
                                  f"(top-level keys: {', '.join(map(str, raw)) or 'none'})")
        if not isinstance(raw[key], list):
            raise AnnotationError(f"{path}: '{key}' must be a list, got a {type(raw[key]).__name__}")
    return raw


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63


def _column(records, key, default=None, all_dicts=False):
    """``[record.get(key, default)]``; ``None`` for records that are not objects."""
    if all_dicts:
        return [r.get(key, default) for r in records]
    return [r.get(key, default) if isinstance(r, dict) else None for r in records]


def _int_column(values):
    """``(int64 array, ok mask)``: fast when every value is an int, else checked one by one."""
    try:
        arr = np.array(values)
    except (ValueError, TypeError, OverflowError):
        arr = None
    if arr is not None and arr.ndim == 1 and arr.dtype.kind in "iu" and len(arr) == len(values):
        return arr.astype(np.int64), np.ones(len(values), bool)
    ok = np.array([_is_int(v) for v in values], dtype=bool)
    arr = np.array([v if good else 0 for v, good in zip(values, ok)], dtype=np.int64)
    return arr, ok


def _flag_column(values):
    """``(bool array, ok mask)`` of optional 0/1 flags (``None``: 0)."""
    values = [0 if v is None else v for v in values]
    try:
        arr = np.array(values)
    except (ValueError, TypeError, OverflowError):
        arr = None
    if arr is not None and arr.ndim == 1 and arr.dtype.kind in "biu" and len(arr) == len(values):
        return arr.astype(bool), (arr == 0) | (arr == 1)
    ok = np.array([isinstance(v, (bool, int)) and v in (0, 1) for v in values], dtype=bool)
    return np.array([bool(v) if good else False for v, good in zip(values, ok)], dtype=bool), ok


def _bbox_column(values):
    """``((N, 4) float array, ok mask)``: 4 numbers each (not strings, not booleans)."""
    try:
        arr = np.array(values)
    except (ValueError, TypeError, OverflowError):
        arr = None
    if arr is not None and arr.shape == (len(values), 4) and arr.dtype.kind in "iuf":
        return arr.astype(np.float64), np.ones(len(values), bool)

    def good(b):
        return (isinstance(b, (list, tuple)) and len(b) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b))

    ok = np.array([good(b) for b in values], dtype=bool)
    arr = np.array([[float(v) for v in b] if g else [0.0] * 4 for b, g in zip(values, ok)],
                   dtype=np.float64).reshape(-1, 4)
    return arr, ok


def _float_column(values):
    """Optional positive numbers (``area``): ``NaN`` where missing or not a number."""
    try:
        arr = np.array(values, dtype=np.float64)
        if arr.shape != (len(values),):
            raise ValueError
    except (ValueError, TypeError, OverflowError):
        arr = np.array([float(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                        else np.nan for v in values], dtype=np.float64)
    return arr


def _outside(name):
    """Why ``name`` is not a plain relative path inside the image folder, or ``None``."""
    if not name:
        return "an empty file_name"
    problem = image_path_problem(name)
    return problem.replace("file name", "file_name", 1) if problem else None


def _categories(raw, path):
    """``{category id: name}`` in file order, names stripped of surrounding white space;
    a broken category list (or an empty name) always raises."""
    names = {}
    for i, cat in enumerate(raw["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise AnnotationError(f"{path}: category #{i} needs an integer 'id' and a string "
                                  f"'name', got {cat!r}")
        if cat["id"] in names:
            raise AnnotationError(f"{path}: category id {cat['id']} is listed twice "
                                  f"({names[cat['id']]!r} and {cat['name']!r})")
        # Stripped as the VOC reader strips <name> and classes.txt readers strip
        # lines: the classes.txt written beside the weights must read back the same.
        name = cat["name"].strip()
        if not name:
            raise AnnotationError(f"{path}: category id {cat['id']} has an empty name "
                                  f"({cat['name']!r})")
        names[cat["id"]] = name
    return names


def _images(raw, path, image_dir, check_images, problems):
    """Valid image records: ``(ids (n,) int64 sorted, names, widths, heights)``."""
    records = raw["images"]
    ids, id_ok = _int_column(_column(records, "id"))
    seen_ids, seen_names = {}, {}
    keep_ids, names, widths, heights = [], [], [], []
    for i, rec in enumerate(records):
        what = f"image #{i}" if not id_ok[i] else f"image id {int(ids[i])}"
        if not isinstance(rec, dict):
            problems.report(what, f"expected an object, got {rec!r}")
            continue
        if not id_ok[i]:
            problems.report(what, f"needs an integer 'id', got {rec.get('id')!r}")
            continue
        missing = [k for k in ("file_name", "width", "height") if k not in rec]
        if missing:
            problems.report(what, f"missing {', '.join(repr(k) for k in missing)}")
            continue
        name, width, height = rec["file_name"], rec["width"], rec["height"]
        if not isinstance(name, str):
            problems.report(what, f"file_name must be a string, got {name!r}")
            continue
        size_ok = (type(width) in (int, float) and type(height) in (int, float)
                   and 0 < width < math.inf and 0 < height < math.inf
                   and round(width) >= 1 and round(height) >= 1)
        if not size_ok:
            problems.report(what, f"({name}) width and height must be positive numbers, "
                                  f"got {width!r} x {height!r}")
            continue
        why = _outside(name)
        if why:
            problems.report(what, why)
            continue
        image_id = int(ids[i])
        if image_id in seen_ids:
            problems.report(what, f"({name}) the id is used twice (also {seen_ids[image_id]!r})")
            continue
        if name in seen_names:
            problems.report(what, f"file_name {name!r} is listed twice (also image id "
                                  f"{seen_names[name]})")
            continue
        if check_images and not os.path.isfile(os.path.join(image_dir, name)):
            problems.report(what, f"image {os.path.join(image_dir, name)} not found")
            continue
        seen_ids[image_id] = name
        seen_names[name] = image_id
        keep_ids.append(image_id)
        names.append(name)
        widths.append(float(width))
        heights.append(float(height))
    order = np.argsort(np.array(keep_ids, dtype=np.int64), kind="stable")
    return (np.array(keep_ids, dtype=np.int64)[order], [names[j] for j in order],
            np.array(widths)[order], np.array(heights)[order])


def _lookup(sorted_keys, values):
    """Index of each value in ``sorted_keys`` and whether it is there."""
    pos = np.searchsorted(sorted_keys, values)
    pos = np.minimum(pos, max(len(sorted_keys) - 1, 0))
    found = (sorted_keys[pos] == values) if len(sorted_keys) else np.zeros(len(values), bool)
    return pos, found


def load_coco(annotation_file, image_dir=None, classes=None, keep_empty=False, on_error="raise",
              skip_difficult=False, evaluation=False):
    """Read a COCO JSON detection file into a :class:`CocoDataset`.

    Args:
        annotation_file: the JSON file (``images``, ``annotations``,
            ``categories``; ``bbox`` is ``[x, y, width, height]`` in pixels).
        image_dir: the folder the ``file_name`` entries are relative to;
            every image must exist there. ``None``: the annotation file's
            folder (Roboflow's layout), without checking the images.
        classes: class names in label order (label ``i + 1`` is
            ``classes[i]``), matched to the categories' ``name``, e.g.
            ``voc.VOC_CLASSES`` so a model shares label ids with one trained
            on VOC XML. ``None``: every category with at least one box, in
            category id order (so placeholders such as Roboflow's category 0
            ``objects`` do not become classes).
        keep_empty: keep images without a (non-crowd) box, as negatives with
            ``(0, 4 + C)`` rows; otherwise they are left out.
        on_error: ``"raise"`` an :class:`AnnotationError` naming the file and
            the record (``image id 3``, ``annotation id 17``) for a bad
            record, or ``"warn"`` and skip it (an annotation of a skipped
            image is skipped too). Problems of the whole file (missing,
            not JSON, no ``images`` list, a broken category list) always
            raise.
        skip_difficult: leave objects marked ``"difficult": 1`` out of
            ``data`` (as ``XML_preprocessor``'s option).
        evaluation: read the file as pycocotools scores it. Every
            annotation with a known image and category and 4 finite numbers
            stays in ``annotations`` with its box as written (not clipped),
            also where training refuses it: zero or negative width or
            height, under one pixel, outside the image. No detection can
            match such a box, so it counts as a miss, as in pycocotools.
            ``data`` keeps only the boxes training accepts; one warning
            gives the number of the others. Implies ``keep_empty`` (every
            image of the file is scored). ``areas`` is the file's ``area``
            where it is a finite number, else ``width * height``.

    Checked per record: ``image_id`` and ``category_id`` exist (a category
    outside ``classes`` is a problem too), ``bbox`` is 4 finite numbers
    with positive width and height, at least one pixel wide and high (a
    box of width 1 is the one-pixel box ``xmin == xmax`` of VOC's inclusive
    convention, which :func:`ssd300.voc.parse_annotation` reads too; a box
    under one pixel would come out with ``xmax < xmin`` and is refused by
    both), lying in the image up to :data:`BOX_TOLERANCE` pixels (that
    excess is clipped); with ``evaluation`` these box checks only decide
    what goes into ``data``. ``iscrowd`` and
    ``difficult`` are 0/1; image ids and file names are unique, file names
    stay inside the image folder, sizes are positive.

    Returns:
        :class:`CocoDataset`.

    Raises:
        AnnotationError: see ``on_error``.
    """
    # The parsed JSON is millions of objects; the cyclic garbage collector
    # would re-scan them many times while the per-image entries are built.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_coco(os.fspath(annotation_file), image_dir, classes, keep_empty or evaluation,
                          on_error, skip_difficult, evaluation)
    finally:
        if enabled:
            gc.enable()


def _load_coco(path, image_dir, classes, keep_empty, on_error, skip_difficult, evaluation):
    problems = _Problems(path, on_error)
    raw = _read_json(path)
    check_images = image_dir is not None
    image_dir = os.fspath(image_dir) if image_dir is not None else (os.path.dirname(path) or ".")
    if check_images and not os.path.isdir(image_dir):
        raise AnnotationError(f"{image_dir}: image folder not found (for {path})")

    cat_names = _categories(raw, path)
    img_ids, img_names, img_w, img_h = _images(raw, path, image_dir, check_images, problems)

    anns = raw["annotations"]
    n = len(anns)
    is_dict = np.array([isinstance(a, dict) for a in anns], dtype=bool)
    dicts = bool(is_dict.all())
    ann_ids, ann_id_ok = _int_column(_column(anns, "id", None, dicts))
    image_col, image_ok = _int_column(_column(anns, "image_id", None, dicts))
    cat_col, cat_ok = _int_column(_column(anns, "category_id", None, dicts))
    boxes, box_ok = _bbox_column(_column(anns, "bbox", None, dicts))
    crowd, crowd_ok = _flag_column(_column(anns, "iscrowd", None, dicts))
    diff, diff_ok = _flag_column(_column(anns, "difficult", None, dicts))
    area = _float_column(_column(anns, "area", np.nan, dicts))

    img_index, img_found = _lookup(img_ids, image_col)
    raw_image_ids = {r.get("id") for r in raw["images"] if isinstance(r, dict) and _is_int(r.get("id"))}
    finite = np.isfinite(boxes).all(axis=1)
    boxes[~finite] = 0  # reported below; keeps the arithmetic quiet
    positive = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    w = img_w[img_index] if len(img_ids) else np.zeros(n)
    h = img_h[img_index] if len(img_ids) else np.zeros(n)
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    t = BOX_TOLERANCE
    inside = (x0 >= -t) & (y0 >= -t) & (x1 <= w + t) & (y1 <= h + t)
    cx0, cy0 = np.clip(x0, 0, w), np.clip(y0, 0, h)
    cx1, cy1 = np.clip(x1, 0, w), np.clip(y1, 0, h)
    # The VOC rows are xmin = x + 1 ... xmax = x + width: width 1 gives the
    # one-pixel box xmin == xmax (VOC's inclusive convention, as voc.py reads
    # it); a box under one pixel (after clipping) would come out inverted.
    one_pixel = (cx1 - cx0 >= 1) & (cy1 - cy0 >= 1)

    # Classes: names of the categories in use, or the given list.
    known_cat = np.isin(cat_col, np.fromiter(cat_names, dtype=np.int64, count=len(cat_names)))
    # A record pycocotools can score; training also needs a box of at least one pixel inside the image.
    scorable = is_dict & image_ok & img_found & cat_ok & known_cat & box_ok & finite & crowd_ok & diff_ok
    trainable = scorable & positive & inside & one_pixel
    valid = scorable if evaluation else trainable
    if classes is None:
        used = sorted(set(np.unique(cat_col[valid]).tolist()))
        by_name = {}
        for cid in used:
            if cat_names[cid] in by_name:
                raise AnnotationError(f"{path}: categories {by_name[cat_names[cid]]} and {cid} have "
                                      f"the same name {cat_names[cid]!r}")
            by_name[cat_names[cid]] = cid
        classes = tuple(cat_names[c] for c in used)
        category_ids = tuple(used)
    else:
        classes = tuple(classes)
        if len(set(classes)) != len(classes):
            raise UserError(f"class list has repeated names: {classes}")
        ids_of = {}
        for cid, name in cat_names.items():
            if name in classes:
                ids_of.setdefault(name, []).append(cid)
        clash = {k: v for k, v in ids_of.items() if len(v) > 1}
        if clash:
            name, cids = next(iter(clash.items()))
            raise AnnotationError(f"{path}: categories {cids} have the same name {name!r}")
        category_ids = tuple(ids_of[c][0] if c in ids_of else None for c in classes)
    class_cats = np.array([c for c in category_ids if c is not None], dtype=np.int64)
    class_labels = np.array([i + 1 for i, c in enumerate(category_ids) if c is not None], dtype=np.int64)
    order = np.argsort(class_cats)
    cat_pos, in_classes = _lookup(class_cats[order], cat_col)
    labels = class_labels[order][cat_pos] if len(class_cats) else np.zeros(n, np.int64)

    # Report bad records in file order, naming each by its id.
    bad = np.flatnonzero(~(valid & in_classes))
    for i in bad:
        a = anns[i]
        what = f"annotation id {int(ann_ids[i])}" if ann_id_ok[i] else f"annotation #{i}"
        if not isinstance(a, dict):
            problems.report(what, f"expected an object, got {a!r}")
        elif not image_ok[i] or not cat_ok[i]:
            key = "image_id" if not image_ok[i] else "category_id"
            problems.report(what, f"needs an integer '{key}', got {a.get(key)!r}")
        elif not img_found[i]:
            if image_col[i] in raw_image_ids:
                problems.report(what, f"its image id {int(image_col[i])} was skipped")
            else:
                problems.report(what, f"image_id {int(image_col[i])} is not in 'images'")
        elif not known_cat[i]:
            problems.report(what, f"category_id {int(cat_col[i])} is not in 'categories'")
        elif not box_ok[i]:
            problems.report(what, f"bbox must be 4 numbers [x, y, width, height], got {a.get('bbox')!r}")
        elif not finite[i]:
            problems.report(what, f"bbox has a value that is not finite: {a.get('bbox')!r}")
        elif not positive[i] and not evaluation:
            problems.report(what, f"bbox {a.get('bbox')!r} needs a positive width and height")
        elif not inside[i] and not evaluation:
            problems.report(what, f"bbox {a.get('bbox')!r} lies outside the {w[i]:g}x{h[i]:g} image "
                                  f"{img_names[img_index[i]]}")
        elif not one_pixel[i] and not evaluation:
            problems.report(what, f"bbox {a.get('bbox')!r} is under one pixel wide or high inside the "
                                  f"{w[i]:g}x{h[i]:g} image {img_names[img_index[i]]}")
        elif not crowd_ok[i] or not diff_ok[i]:
            key = "iscrowd" if not crowd_ok[i] else "difficult"
            problems.report(what, f"'{key}' must be 0 or 1, got {a.get(key)!r}")
        else:
            problems.report(what, f"category {cat_names[int(cat_col[i])]!r} (id {int(cat_col[i])}) "
                                  f"is not in the class list ({', '.join(classes)})")
    problems.finish()
    keep = valid & in_classes
    if evaluation and (keep & ~trainable).any():
        warnings.warn(f"{path}: {int((keep & ~trainable).sum())} boxes of no size, under one pixel or "
                      f"outside their image are kept for evaluation, as pycocotools keeps them (no "
                      f"detection can match the empty ones), and left out of the training rows",
                      stacklevel=3)

    # Group the kept annotations by image (file order within an image).
    sel = np.flatnonzero(keep)
    sel = sel[np.argsort(img_index[sel], kind="stable")]
    img_of = img_index[sel]
    pix = np.stack([cx0[sel] + 1, cy0[sel] + 1, cx1[sel], cy1[sel]], axis=1)
    size = np.stack([w[sel], h[sel], w[sel], h[sel]], axis=1)
    lab = labels[sel]
    is_crowd = crowd[sel]
    is_diff = diff[sel]
    if evaluation:
        # The boxes as written, as pycocotools scores them (its IoU does not clip).
        ann_pix = np.stack([x0[sel] + 1, y0[sel] + 1, x1[sel], y1[sel]], axis=1)
        areas = np.where(np.isfinite(area[sel]), area[sel], boxes[sel, 2] * boxes[sel, 3])
    else:
        ann_pix = pix
        areas = np.where(np.isfinite(area[sel]) & (area[sel] > 0), area[sel],
                         (cx1[sel] - cx0[sel]) * (cy1[sel] - cy0[sel]))
    ignore = is_diff | is_crowd
    train_row = trainable[sel] & ~is_crowd & ~(is_diff & skip_difficult)
    # data rows: normalised box, then one-hot class (written in place: no (N, C) temporaries).
    num_train = int(train_row.sum())
    data_rows = np.zeros((num_train, 4 + len(classes)))
    data_rows[:, :4] = pix[train_row] / size[train_row]
    data_rows[np.arange(num_train), 3 + lab[train_row]] = 1.0
    data_diff = is_diff[train_row]
    img_range = np.arange(len(img_ids) + 1)
    a_bounds = np.searchsorted(img_of, img_range).tolist()
    t_bounds = np.searchsorted(img_of[train_row], img_range)
    chosen = np.arange(len(img_ids)) if keep_empty else np.flatnonzero(np.diff(t_bounds) > 0)
    t_bounds = t_bounds.tolist()
    int_w = np.round(img_w).astype(np.int64).tolist()
    int_h = np.round(img_h).astype(np.int64).tolist()
    id_list = img_ids.tolist()

    # One dict entry per image, holding views of the arrays above.
    data, difficult, annotations, iscrowd, area_of, image_ids = {}, {}, {}, {}, {}, {}
    for k in chosen.tolist():
        name = img_names[k]
        a0, a1, t0, t1 = a_bounds[k], a_bounds[k + 1], t_bounds[k], t_bounds[k + 1]
        data[name] = data_rows[t0:t1]
        difficult[name] = data_diff[t0:t1]
        annotations[name] = Annotation(name, int_w[k], int_h[k], ann_pix[a0:a1], lab[a0:a1], ignore[a0:a1])
        iscrowd[name] = is_crowd[a0:a1]
        area_of[name] = areas[a0:a1]
        image_ids[name] = id_list[k]
    return CocoDataset(data=data, difficult=difficult, annotations=annotations, iscrowd=iscrowd,
                       areas=area_of, classes=classes, category_ids=category_ids,
                       image_ids=image_ids, image_dir=image_dir, annotation_file=path,
                       evaluation=evaluation)


def _listdir(path):
    """``os.listdir(path)``; :class:`UserError` naming the folder when it cannot be read."""
    try:
        return os.listdir(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None


def _split_names(split):
    names = [split]
    if split in _SPLIT_ALIASES:
        names.append(_SPLIT_ALIASES[split])
    return names


def find_coco_split(root, split):
    """The annotation file and image folder of a split of a COCO dataset folder.

    Recognised layouts:

    * Roboflow's export: ``root/<split>/_annotations.coco.json`` with the
      images beside it, ``split`` in ``train``, ``valid`` (or ``val``),
      ``test``;
    * COCO's own: ``root/annotations/instances_<split>*.json`` with the
      images in ``root/<split>*/`` (e.g. ``instances_val2017.json`` and
      ``val2017/`` for ``split="val"`` or ``"val2017"``).

    Args:
        root: the dataset folder.
        split: the split name.

    Returns:
        ``(annotation_file, image_dir)``.

    Raises:
        UserError: the split is not found; the message lists what is there.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise UserError(f"{root}: dataset folder not found")
    for name in _split_names(split):
        candidate = os.path.join(root, name, ROBOFLOW_ANNOTATIONS)
        if os.path.isfile(candidate):
            return candidate, os.path.join(root, name)
    ann_dir = os.path.join(root, "annotations")
    if os.path.isdir(ann_dir):
        for name in _split_names(split):
            found = sorted(f for f in _listdir(ann_dir)
                           if f.startswith(f"instances_{name}") and f.endswith(".json"))
            for f in found:
                images = os.path.join(root, f[len("instances_"):-len(".json")])
                if os.path.isdir(images):
                    return os.path.join(ann_dir, f), images
    raise UserError(f"{root}: no COCO split {split!r}. Expected {split}/{ROBOFLOW_ANNOTATIONS} "
                    f"(Roboflow) or annotations/instances_{split}*.json with the images in "
                    f"{split}*/ (COCO). " + _describe(root))


def _describe(root):
    splits = coco_splits(root)
    entries = sorted(_listdir(root))
    shown = ", ".join(entries[:20]) + (f", ... ({len(entries)} entries)" if len(entries) > 20 else "")
    return (f"Splits found: {', '.join(splits) if splits else 'none'}. "
            f"The folder holds: {shown or 'nothing'}")


def coco_splits(root):
    """Names of the Roboflow-style split folders of ``root`` that hold an annotation file."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        return []
    return sorted(d for d in _listdir(root)
                  if os.path.isfile(os.path.join(root, d, ROBOFLOW_ANNOTATIONS)))


def is_coco_root(path):
    """Whether ``path`` holds Roboflow-style split folders or COCO's ``annotations/instances_*.json``."""
    path = os.fspath(path)
    if coco_splits(path):
        return True
    ann_dir = os.path.join(path, "annotations")
    return os.path.isdir(ann_dir) and any(f.startswith("instances_") and f.endswith(".json")
                                          for f in _listdir(ann_dir))
