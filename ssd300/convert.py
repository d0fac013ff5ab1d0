"""Converting datasets between PASCAL VOC XML folders and COCO JSON, both ways.

Boxes: VOC's 1-based inclusive pixel ``xmin, ymin, xmax, ymax`` become COCO's
continuous ``[x, y, width, height]`` with ``x = xmin - 1``, ``y = ymin - 1``,
``width = xmax - xmin + 1``, ``height = ymax - ymin + 1`` (Detectron's VOC
convention: pixel ``i`` covers ``[i - 1, i]``), and back with
:mod:`ssd300.coco`'s inverse, so both round trips are exact for integer
pixel boxes (fractional ones come back to within float rounding; a VOC-like
file with ``xmin = 0`` comes back as 1, clipped to the image). Roboflow's own
VOC -> COCO export writes ``width = xmax - xmin`` instead: see
:mod:`ssd300.coco`.

VOC's ``difficult`` flag is kept in COCO as an extra per-annotation key
``"difficult": 1`` (with ``"iscrowd": 0``); :func:`ssd300.coco.load_coco`
reads it back into ``annotations[...].difficult`` so evaluation ignores those
objects. COCO crowd boxes (``iscrowd: 1``) have no VOC equivalent: they are
written as ``difficult`` objects, which evaluation also ignores.

Every file is written atomically (:func:`ssd300.atomic.atomic_path`); XML is
built with ElementTree, which escapes names. An output that cannot be written
(a folder where a file should go or the other way round, a missing or
unwritable folder) is a :class:`~ssd300.errors.UserError` naming the path and
the reason, and what the call had created is removed again.
"""

import datetime
import json
import os
import shutil
import xml.etree.ElementTree as ET

import numpy as np

from .atomic import atomic_path, missing_folders, remove_empty_folders
from .coco import find_coco_split, load_coco
from .errors import UserError
from .voc import XML_preprocessor, read_classes_file, read_split

#: How :func:`coco_to_voc` puts the images into ``JPEGImages``.
LINK_MODES = ("hardlink", "copy", "symlink")
_VOC_SPLITS = {"valid": "val"}


def _annotations_dir(voc_root):
    """``(Annotations folder, VOC root or None)`` of a VOC root or an Annotations folder."""
    path = os.path.normpath(os.fspath(voc_root))
    if os.path.isdir(os.path.join(path, "Annotations")):
        return os.path.join(path, "Annotations"), path
    if os.path.isdir(path):
        return path, os.path.dirname(path)
    raise UserError(f"{path}: VOC folder not found")


def _check_target(path, folder, what):
    """Refuse, before any work, an output that cannot be created where it is asked for.

    Args:
        path: the output file (``folder=False``) or folder (``folder=True``).
        what: the output, for the message (``"the COCO JSON"``).

    Raises:
        UserError: a folder stands where the file should go, a file where
            the folder (or one above it) should be.
    """
    if folder and os.path.lexists(path) and not os.path.isdir(path):
        raise UserError(f"{path}: cannot write {what} (a file of that name exists; a folder is needed)")
    if not folder and os.path.isdir(path):
        raise UserError(f"{path}: cannot write {what} (it is a folder)")
    missing = missing_folders(path)
    existing = os.path.dirname(missing[0]) if missing else os.path.dirname(os.path.abspath(path))
    if existing and not os.path.isdir(existing):
        raise UserError(f"{path}: cannot write {what} ({existing} is a file, not a folder)")


def _undo(created):
    """Remove the files and folders of ``created`` (in creation order) that still exist, last first."""
    for path in reversed(created):
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)  # only if empty: a folder this call made and filled is emptied first
            else:
                os.remove(path)
        except OSError:
            pass


def _os_error(error, out, what):
    """A :class:`UserError` for an ``OSError`` raised while writing ``out``.

    A file that is neither ``out``, nor in it, nor a folder above it, nor a
    temporary file beside it was being read (an image being copied), and is
    named as unreadable; otherwise ``out`` could not be written.
    """
    reason = error.strerror or str(error)
    target = os.path.abspath(out)
    culprits = [os.fspath(f) for f in (error.filename, error.filename2) if f is not None]

    def written(path):
        path = os.path.abspath(path)
        return (os.path.commonpath([path, target]) in (path, target)
                or path.startswith(os.path.splitext(target)[0] + ".tmp"))

    if culprits and not any(written(f) for f in culprits):
        return UserError(f"{culprits[0]}: cannot read ({reason})")
    return UserError(f"{out}: cannot write {what} ({reason})")


def _numbers(values):
    """``values`` as (nested) lists of Python numbers: ints where all are integral (cleaner JSON)."""
    values = np.asarray(values, dtype=np.float64)
    if np.all(values == np.round(values)) and np.all(np.abs(values) < 2**53):
        return values.astype(np.int64).tolist()
    return values.tolist()


def voc_to_coco(voc_root, out_json, classes=None, split=None, on_error="raise"):
    """Write a VOC XML dataset as one COCO JSON file.

    Args:
        voc_root: a VOC folder (holding ``Annotations/``) or the
            ``Annotations`` folder itself.
        out_json: the JSON file to write (atomically).
        classes: class names in label order; ``None``: the ``classes.txt``
            beside ``Annotations`` (as the synthetic dataset has) or the 20
            VOC classes. Category ``i + 1`` is ``classes[i]``.
        split: only the ids of ``ImageSets/Main/<split>.txt``; ``None``: every
            annotation file.
        on_error: ``"raise"`` or ``"warn"`` for bad objects, as
            ``XML_preprocessor``.

    The ``file_name`` of each image is the XML's ``<filename>``, relative to
    ``JPEGImages`` (load it with ``load_coco(out_json, voc_root/JPEGImages)``).
    Images get ids ``1 .. n`` in file name order, annotations ``1 .. N``.

    Returns:
        ``{"images": n, "annotations": N, "classes": C}``.

    Raises:
        UserError: a bad dataset; ``out_json`` cannot be written (it is a
            folder, a folder above it is a file, missing and not creatable,
            or not writable), naming it and the reason. No file is left
            behind, nor a folder the call created.
    """
    out_json = os.fspath(out_json)
    _check_target(out_json, False, "the COCO JSON")
    ann_dir, root = _annotations_dir(voc_root)
    ids = None if split is None else read_split(root, split)
    prep = XML_preprocessor(ann_dir, classes=classes, ids=ids, on_error=on_error)
    keys = sorted(prep.annotations)
    anns = [prep.annotations[k] for k in keys]
    images = [{"id": i + 1, "file_name": k, "width": a.width, "height": a.height}
              for i, (k, a) in enumerate(zip(keys, anns))]
    counts = [len(a.labels) for a in anns]
    image_of = np.repeat(np.arange(1, len(keys) + 1), counts).tolist()
    if sum(counts):
        boxes = np.concatenate([a.boxes for a in anns])
        labels = np.concatenate([a.labels for a in anns]).tolist()
        difficult = np.concatenate([a.difficult for a in anns]).astype(int).tolist()
    else:
        boxes, labels, difficult = np.zeros((0, 4)), [], []
    xywh = np.concatenate([boxes[:, :2] - 1, boxes[:, 2:] - boxes[:, :2] + 1], axis=1)
    area = _numbers(xywh[:, 2] * xywh[:, 3])
    bbox = _numbers(xywh)
    annotations = [{"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "area": ar,
                    "iscrowd": 0, "difficult": d, "segmentation": []}
                   for i, (im, c, b, ar, d) in enumerate(zip(image_of, labels, bbox, area, difficult))]
    coco = {
        "info": {"description": f"converted from VOC {ann_dir} by ssd300",
                 "date_created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
        "licenses": [],
        "categories": [{"id": i + 1, "name": name, "supercategory": "none"}
                       for i, name in enumerate(prep.classes)],
        "images": images,
        "annotations": annotations,
    }
    created = missing_folders(os.path.dirname(os.path.abspath(out_json)))
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
        with atomic_path(out_json) as tmp, open(tmp, "w", encoding="utf8") as f:
            json.dump(coco, f)
    except BaseException as e:
        _undo(created)
        if isinstance(e, OSError):
            raise _os_error(e, out_json, "the COCO JSON") from None
        raise
    return {"images": len(images), "annotations": len(annotations), "classes": len(prep.classes)}


def _number_text(value):
    value = float(value)
    return str(int(value)) if value == int(value) else repr(value)


def annotation_xml(annotation, classes, folder="VOC", database="ssd300 conversion"):
    """The VOC XML text of one :class:`ssd300.voc.Annotation` (pixel boxes, VOC convention)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = annotation.filename
    ET.SubElement(ET.SubElement(root, "source"), "database").text = database
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(int(annotation.width))
    ET.SubElement(size, "height").text = str(int(annotation.height))
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "0"
    for box, label, difficult in zip(annotation.boxes, annotation.labels, annotation.difficult):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[int(label) - 1]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "1" if difficult else "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bndbox, tag).text = _number_text(value)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode") + "\n"


def _voc_ids(names):
    """A VOC image id (file stem, sub-folders joined with ``__``) for each COCO file name."""
    ids = [os.path.splitext(n.replace("\\", "/"))[0].replace("/", "__") for n in names]
    seen = {}
    for name, image_id in zip(names, ids):
        if image_id in seen:
            raise UserError(f"{name!r} and {seen[image_id]!r} would both become VOC image "
                            f"{image_id!r}; rename one")
        seen[image_id] = name
    return ids


def _place_image(src, dst, link):
    if os.path.exists(dst) and os.path.samefile(src, dst):
        return
    with atomic_path(dst) as tmp:
        if link == "hardlink":
            try:
                os.link(src, tmp)
                return
            except OSError:  # another file system, or links not allowed: copy
                pass
        if link == "symlink":
            os.symlink(os.path.abspath(src), tmp)
        else:
            shutil.copy2(src, tmp)


def coco_to_voc(annotation_file, image_dir, out_root, classes=None, split="train", link="hardlink",
                keep_empty=True, on_error="raise"):
    """Write a COCO JSON dataset in the VOC layout.

    Writes ``out_root/Annotations/<id>.xml``, ``JPEGImages/<id><ext>``,
    ``ImageSets/Main/<split>.txt`` and ``classes.txt``; the id is the image's
    file name without its extension (sub-folders joined with ``__``). An
    existing ``out_root`` is added to (one call per split), but its
    ``classes.txt`` must name the same classes.

    Args:
        annotation_file, image_dir, classes, on_error: as
            :func:`ssd300.coco.load_coco` (``image_dir`` is required: the
            images are placed into ``JPEGImages``).
        out_root: the VOC folder to write.
        split: name of the ``ImageSets/Main`` list (Roboflow's ``valid`` is
            written as ``val``).
        link: ``"hardlink"`` (default: no extra disk space, and the VOC
            folder stays valid if the COCO folder is deleted; falls back to
            a copy across file systems), ``"copy"``, or ``"symlink"``
            (absolute links to the COCO images).
        keep_empty: also write images without boxes (XML without objects).

    Boxes are ``xmin = x + 1, ymin = y + 1, xmax = x + w, ymax = y + h``;
    crowd boxes become ``difficult`` objects.

    Returns:
        ``{"images": n, "objects": N, "classes": C}``.

    Raises:
        UserError: a bad annotation file, missing images, two file names
            that would give the same VOC id, a different ``classes.txt``
            already in ``out_root``; an output that cannot be written (a
            file where a folder goes or the other way round, a missing or
            unwritable folder), naming it and the reason. On such an error
            the files and folders this call had created are removed (files
            it replaced in an existing ``out_root`` keep the new content).
    """
    if link not in LINK_MODES:
        raise ValueError(f"link must be one of {LINK_MODES}, got {link!r}")
    if image_dir is None:
        raise UserError("coco_to_voc needs the image folder")
    out_root = os.fspath(out_root)
    what = "the VOC dataset"
    _check_target(out_root, True, what)
    dataset = load_coco(annotation_file, image_dir, classes=classes, keep_empty=keep_empty,
                        on_error=on_error)
    classes_file = os.path.join(out_root, "classes.txt")
    if os.path.isfile(classes_file):
        existing = read_classes_file(classes_file)
        if existing != dataset.classes:
            raise UserError(f"{classes_file} names the classes {existing}, but {annotation_file} "
                            f"gives {dataset.classes}; pass classes= or write to another folder")
    ann_dir = os.path.join(out_root, "Annotations")
    img_dir = os.path.join(out_root, "JPEGImages")
    sets_dir = os.path.join(out_root, "ImageSets", "Main")
    names = sorted(dataset.annotations)
    ids = _voc_ids(names)
    jpeg_names = [image_id + os.path.splitext(name)[1] for name, image_id in zip(names, ids)]
    split_file = os.path.join(sets_dir, f"{_VOC_SPLITS.get(split, split)}.txt")
    # Every output checked before the first is written: a folder in the way
    # would otherwise stop the conversion half-way.
    for folder in (ann_dir, img_dir, os.path.dirname(sets_dir), sets_dir):
        _check_target(folder, True, what)
    for path in [os.path.join(ann_dir, f"{i}.xml") for i in ids] + [
            os.path.join(img_dir, j) for j in jpeg_names] + [split_file, classes_file]:
        _check_target(path, False, what)

    created = []  # files and folders this call made, in order, removed again on an error
    try:
        for folder in (ann_dir, img_dir, sets_dir):
            created += missing_folders(folder)
            os.makedirs(folder, exist_ok=True)
        objects = 0
        for name, image_id, jpeg_name in zip(names, ids, jpeg_names):
            ann = dataset.annotations[name]
            ann_out = type(ann)(jpeg_name, ann.width, ann.height, ann.boxes, ann.labels, ann.difficult)
            for path in (os.path.join(img_dir, jpeg_name), os.path.join(ann_dir, f"{image_id}.xml")):
                if not os.path.lexists(path):
                    created.append(path)
            _place_image(os.path.join(dataset.image_dir, name), os.path.join(img_dir, jpeg_name), link)
            with atomic_path(os.path.join(ann_dir, f"{image_id}.xml")) as tmp, \
                    open(tmp, "w", encoding="utf8") as f:
                f.write(annotation_xml(ann_out, dataset.classes))
            objects += len(ann.labels)
        for path, lines in ((split_file, ids), (classes_file, dataset.classes)):
            if not os.path.lexists(path):
                created.append(path)
            with atomic_path(path) as tmp, open(tmp, "w", encoding="utf8") as f:
                f.write("".join(f"{line}\n" for line in lines))
    except BaseException as e:
        _undo(created)
        if isinstance(e, OSError):
            raise _os_error(e, out_root, what) from None
        raise
    return {"images": len(names), "objects": objects, "classes": len(dataset.classes)}


def coco_root_to_voc(root, out_root, classes=None, splits=("train", "valid", "test"), **options):
    """Convert every split of a Roboflow/COCO export folder into one VOC folder.

    Args:
        root: the export folder (see :func:`ssd300.coco.find_coco_split`).
        out_root: the VOC folder.
        classes: class names; ``None``: the categories with boxes in any
            split, in category id order, so every split shares the labels.
        splits: split names to look for; missing ones are skipped.
        **options: passed to :func:`coco_to_voc`.

    Returns:
        ``{split: coco_to_voc's counts}``.

    Raises:
        UserError: no split found.
    """
    found = {}
    for split in splits:
        try:
            found[split] = find_coco_split(root, split)
        except UserError:
            continue
    if not found:
        find_coco_split(root, splits[0])  # raises, listing what is there
    if classes is None:  # the categories used in any split, in category id order
        used = {}
        for annotation_file, _ in found.values():
            part = load_coco(annotation_file, on_error=options.get("on_error", "raise"))
            used.update(zip(part.category_ids, part.classes))
        classes = tuple(used[c] for c in sorted(used))
    return {split: coco_to_voc(annotation_file, image_dir, out_root, classes=classes, split=split,
                               **options)
            for split, (annotation_file, image_dir) in found.items()}

