"""PASCAL VOC detection metrics (the devkit's rules), vectorised in NumPy.

Ground truth: ``{image_id: {"boxes": (N, 4), "labels": (N,), "difficult": (N,)}}``
with pixel ``xmin, ymin, xmax, ymax`` (VOC: 1-based, inclusive) and labels
``1 .. C``. Detections: ``{image_id: (M, 6)}`` rows ``[label, score, xmin,
ymin, xmax, ymax]`` in pixels.
"""

import collections.abc
import gzip
import json
import os

import numpy as np

from .atomic import atomic_path
from .box_ops import iou
from .checks import check_unit_interval
from .errors import UserError
from .voc import AnnotationError

_CHUNK = 200_000


def voc_ap(recall, precision, use_07_metric=True):
    """Average precision from a precision/recall curve.

    ``use_07_metric``: VOC2007's 11-point interpolation (mean of the best
    precision at recall >= 0, 0.1, ..., 1). Otherwise (VOC2010 and later) the
    area under the monotone precision envelope.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        best = [precision[recall >= t].max(initial=0.0) for t in np.linspace(0, 1, 11)]
        return float(np.mean(best))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def _class_tp_fp(det_image, det_boxes, gt_boxes, gt_difficult, gt_offsets, iou_threshold):
    """TP/FP flags of one class's detections, already sorted by decreasing score.

    ``gt_boxes[gt_offsets[i]:gt_offsets[i + 1]]`` are image ``i``'s boxes of
    this class. Each detection is matched to its single best-overlap ground
    truth; the first detection (by score) matching a non-difficult object is a
    true positive, later ones are false positives, and a match to a difficult
    object counts as neither.
    """
    n = len(det_image)
    counts = np.diff(gt_offsets)
    width = int(counts.max()) if counts.size else 0
    best_iou = np.zeros(n)
    best_gt = np.full(n, -1, dtype=np.int64)
    if width:
        for start in range(0, n, _CHUNK):
            sl = slice(start, start + _CHUNK)
            img = det_image[sl]
            slot = gt_offsets[img][:, None] + np.arange(width)[None, :]
            valid = np.arange(width)[None, :] < counts[img][:, None]
            slot = np.where(valid, slot, 0)
            g = gt_boxes[slot]
            d = det_boxes[sl][:, None, :]
            overlap = iou(d, g, offset=1.0)
            # No overlap (IoU 0) is no match, as the devkit's "iw > 0 and ih > 0".
            overlap = np.where(valid & (overlap > 0), overlap, -np.inf)
            j = overlap.argmax(axis=1)
            best_iou[sl] = overlap[np.arange(len(j)), j]
            best_gt[sl] = np.where(np.isfinite(best_iou[sl]), slot[np.arange(len(j)), j], -1)
    matched = (best_gt >= 0) & (best_iou >= iou_threshold)
    difficult = np.zeros(n, dtype=bool)
    difficult[matched] = gt_difficult[best_gt[matched]]
    candidate = matched & ~difficult
    tp = np.zeros(n, dtype=bool)
    idx = np.flatnonzero(candidate)
    _, first = np.unique(best_gt[idx], return_index=True)
    tp[idx[first]] = True
    fp = ~tp & ~(matched & difficult)
    return tp, fp


def _rows(values, columns, what):
    """``values`` as a finite float64 ``(N, columns)`` array; one row may come flat, no rows as any empty array.

    Raises:
        ValueError: another shape (``what`` names the array), or NaN / infinite values.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, columns))
    if array.shape == (columns,):
        array = array[None]
    if array.ndim != 2 or array.shape[1] != columns:
        raise ValueError(f"{what}: expected shape (N, {columns}), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: NaN or infinite values")
    return array


def evaluate_detections(detections, ground_truth, iou_threshold=0.5, use_07_metric=True):
    """Score detections with the PASCAL VOC devkit's rules.

    Per class, detections are ranked by score; each is matched to its single
    best-overlap ground truth of that class in the image (IoU with the +1
    pixel convention, at least ``iou_threshold``); a match to a difficult
    object is ignored; a second match to the same object is a false positive.

    Args:
        detections: ``{image_id: (M, 6)}`` ``[label, score, xmin, ymin, xmax, ymax]``.
        ground_truth: ``{image_id: {"boxes", "labels", "difficult"}}``.
        iou_threshold: overlap needed for a match.
        use_07_metric: 11-point AP (VOC2007) or the area under the precision
            envelope (VOC2010+).

    Returns:
        ``{"ap": {label: AP}, "map": mean AP, "num_positives": {label: n}}``
        over the classes with at least one non-difficult object.

    Raises:
        ValueError: detections for images that have no ground truth entry,
            arrays of other shapes or with NaN (the image named), or an
            ``iou_threshold`` outside ``[0, 1]``.
    """
    check_unit_interval("iou_threshold", iou_threshold)
    for name, value in (("detections", detections), ("ground_truth", ground_truth)):
        if not isinstance(value, collections.abc.Mapping):
            raise ValueError(f"{name} must map image ids to arrays, got {type(value).__name__}")
    unknown = set(detections) - set(ground_truth)
    if unknown:
        raise ValueError(f"detections for {len(unknown)} images without ground truth, "
                         f"e.g. {sorted(unknown)[:3]}")
    image_ids = list(ground_truth)
    index = {image_id: i for i, image_id in enumerate(image_ids)}

    gt_image, gt_boxes, gt_labels, gt_difficult = [], [], [], []
    for i, image_id in enumerate(image_ids):
        g = ground_truth[image_id]
        if not isinstance(g, collections.abc.Mapping) or "boxes" not in g or "labels" not in g:
            raise ValueError(f"ground truth of image {image_id!r}: expected a dict with 'boxes', 'labels' "
                             f"(and 'difficult')")
        boxes = _rows(g["boxes"], 4, f"ground truth boxes of image {image_id!r}")
        labels = np.asarray(g["labels"], dtype=np.int64).reshape(-1)
        difficult = g.get("difficult")
        difficult = (np.zeros(len(boxes), bool) if difficult is None
                     else np.asarray(difficult, dtype=bool).reshape(-1))
        if not len(labels) == len(difficult) == len(boxes):
            raise ValueError(f"ground truth of image {image_id!r}: {len(boxes)} boxes, {len(labels)} labels "
                             f"and {len(difficult)} difficult flags")
        gt_image.append(np.full(len(boxes), i))
        gt_boxes.append(boxes)
        gt_labels.append(labels)
        gt_difficult.append(difficult)
    gt_image = np.concatenate(gt_image) if gt_image else np.zeros(0, np.int64)
    gt_boxes = np.concatenate(gt_boxes) if gt_boxes else np.zeros((0, 4))
    gt_labels = np.concatenate(gt_labels) if gt_labels else np.zeros(0, np.int64)
    gt_difficult = np.concatenate(gt_difficult) if gt_difficult else np.zeros(0, bool)

    det_parts = [(index[k], _rows(v, 6, f"detections of image {k!r}")) for k, v in detections.items()]
    det_image = np.concatenate([np.full(len(d), i) for i, d in det_parts]) if det_parts else np.zeros(0, int)
    dets = np.concatenate([d for _, d in det_parts]) if det_parts else np.zeros((0, 6))

    ap, positives = {}, {}
    for label in np.unique(gt_labels[~gt_difficult]):
        in_class = gt_labels == label
        order = np.argsort(gt_image[in_class], kind="stable")
        c_image = gt_image[in_class][order]
        c_boxes = gt_boxes[in_class][order]
        c_difficult = gt_difficult[in_class][order]
        offsets = np.searchsorted(c_image, np.arange(len(image_ids) + 1))
        num_pos = int((~c_difficult).sum())

        d_mask = dets[:, 0] == label
        d = dets[d_mask]
        rank = np.argsort(-d[:, 1], kind="stable")
        tp, fp = _class_tp_fp(det_image[d_mask][rank], d[rank, 2:6], c_boxes, c_difficult,
                              offsets, iou_threshold)
        tp_cum = np.cumsum(tp)
        fp_cum = np.cumsum(fp)
        keep = tp | fp  # difficult matches drop out of the curve
        tp_cum, fp_cum = tp_cum[keep], fp_cum[keep]
        recall = tp_cum / num_pos
        precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
        ap[int(label)] = voc_ap(recall, precision, use_07_metric)
        positives[int(label)] = num_pos
    mean = float(np.mean(list(ap.values()))) if ap else 0.0
    return {"ap": ap, "map": mean, "num_positives": positives}


def detections_to_pixels(results, image_ids, sizes):
    """Turn ``BBoxUtility.detection_out`` results into evaluation input.

    Args:
        results: list of ``(K, 6)`` arrays with normalised boxes.
        image_ids: the image id of each result.
        sizes: ``(width, height)`` of each image in pixels.

    Returns:
        ``{image_id: (K, 6)}`` with pixel boxes (normalised coordinates times
        the image size, the inverse of the annotation normalisation).
    """
    out = {}
    for result, image_id, (width, height) in zip(results, image_ids, sizes):
        det = np.array(result, dtype=np.float64).reshape(-1, 6)
        det[:, 2:6] *= [width, height, width, height]
        out[image_id] = det
    return out


def devkit_image_ids(keys):
    """``{key: image id}``: each image file name without its extension, the devkit's image id.

    Args:
        keys: image file names (``XML_preprocessor.annotations`` keys).

    Raises:
        AnnotationError: two files share an id (``a.jpg`` and ``a.png``), which
            would merge their ground truth and detections; names both files.
    """
    ids = {key: os.path.splitext(key)[0] for key in keys}
    seen = {}
    for key, image_id in ids.items():
        if image_id in seen:
            raise AnnotationError(f"images {seen[image_id]} and {key} have the same image id "
                                  f"{image_id!r} (the file name without its extension): rename one")
        seen[image_id] = key
    return ids


def ground_truth_from_annotations(annotations, by_file_name=False):
    """``{image_id: {...}}`` from ``{key: Annotation}`` (``XML_preprocessor.annotations``).

    Args:
        annotations: ``{image file name: voc.Annotation}``.
        by_file_name: key by the file name itself instead of the devkit's
            image id (the file name without its extension, see
            :func:`devkit_image_ids`).

    Raises:
        AnnotationError: two files have the same devkit image id.
    """
    ids = {key: key for key in annotations} if by_file_name else devkit_image_ids(annotations)
    return {ids[key]: {"boxes": a.boxes, "labels": a.labels, "difficult": a.difficult}
            for key, a in annotations.items()}


def _read_ground_truth_file(path):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig") as f:
            return json.load(f)
    except FileNotFoundError:
        raise AnnotationError(f"{path}: ground truth file not found") from None
    except IsADirectoryError:
        raise AnnotationError(f"{path}: is a folder, expected a ground truth JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        raise AnnotationError(f"{path}: not valid JSON ground truth ({e})") from None
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read ({e.strerror or e})") from None


def load_ground_truth_json(path, classes):
    """Ground truth from a JSON(.gz) file written from the devkit's annotations.

    Args:
        path: ``{image_id: {"width", "height", "objects": [[name, xmin, ymin,
            xmax, ymax, difficult], ...]}}`` (VOC pixel boxes).
        classes: class names; label ``i + 1`` is ``classes[i]``.

    Returns:
        ``(ground_truth, sizes)``: ``{image_id: {"boxes" (N, 4), "labels" (N,),
        "difficult" (N,)}}`` and ``{image_id: (width, height)}``.

    Raises:
        AnnotationError: the file is missing, not JSON, not of this form, or
            names a class outside ``classes`` (names the file, the image and
            the class).
    """
    path = os.fspath(path)
    raw = _read_ground_truth_file(path)
    if not isinstance(raw, dict):
        raise AnnotationError(f"{path}: expected a JSON object {{image_id: {{...}}}}, "
                              f"got a {type(raw).__name__}")
    index = {name: i + 1 for i, name in enumerate(classes)}
    gt, sizes = {}, {}
    for image_id, entry in raw.items():
        try:
            objects = entry["objects"]
            size = (entry["width"], entry["height"])
            boxes = np.array([o[1:5] for o in objects], dtype=np.float64).reshape(-1, 4)
            names = [o[0] for o in objects]
            difficult = np.array([bool(o[5]) for o in objects], dtype=bool)
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise AnnotationError(f"{path}: image {image_id}: expected {{'width', 'height', 'objects': "
                                  f"[[name, xmin, ymin, xmax, ymax, difficult], ...]}} ({type(e).__name__}: "
                                  f"{e})") from None
        unknown = [n for n in names if n not in index]
        if unknown:
            raise AnnotationError(f"{path}: image {image_id}: unknown class {unknown[0]!r} "
                                  f"(known: {', '.join(classes)})")
        gt[image_id] = {"boxes": boxes, "labels": np.array([index[n] for n in names], dtype=np.int64),
                        "difficult": difficult}
        sizes[image_id] = size
    return gt, sizes


def write_devkit_results(detections, classes, out_dir, prefix="comp4_det_test_"):
    """Write ``<prefix><class>.txt`` files in the devkit's format, atomically.

    Each line: ``image_id score xmin ymin xmax ymax`` (pixels).

    Returns:
        the list of files written.

    Raises:
        UserError: ``out_dir`` cannot be created or written (names it and the reason).
    """
    try:
        return _write_devkit_results(detections, classes, out_dir, prefix)
    except OSError as e:
        raise UserError(f"{out_dir}: cannot write the devkit result files ({e.strerror or e})") from None


def _write_devkit_results(detections, classes, out_dir, prefix):
    os.makedirs(out_dir, exist_ok=True)
    lines = {label: [] for label in range(1, len(classes) + 1)}
    for image_id, det in detections.items():
        for row in np.asarray(det).reshape(-1, 6):
            label = int(row[0])
            if label in lines:
                lines[label].append(f"{image_id} {row[1]:.6f} {row[2]:.1f} {row[3]:.1f} "
                                    f"{row[4]:.1f} {row[5]:.1f}\n")
    written = []
    for label, name in enumerate(classes, start=1):
        path = os.path.join(out_dir, f"{prefix}{name}.txt")
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            f.writelines(lines[label])
        written.append(path)
    return written


def format_ap_table(result, classes):
    """A per-class AP table and the mAP, as text."""
    rows = [f"{'class':<14} {'AP':>7} {'objects':>8}"]
    for label, value in sorted(result["ap"].items()):
        name = classes[label - 1] if 0 < label <= len(classes) else str(label)
        rows.append(f"{name:<14} {value:7.4f} {result['num_positives'][label]:8d}")
    rows.append(f"{'mAP':<14} {result['map']:7.4f}")
    return "\n".join(rows)
