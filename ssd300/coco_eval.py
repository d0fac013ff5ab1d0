"""COCO detection metrics, computed by pycocotools itself.

Detections are this library's ``{image key: (K, 6)}`` rows ``[label, score,
xmin, ymin, xmax, ymax]`` in pixels (VOC convention, as ``Detector`` gives
them and :mod:`ssd300.evaluation` scores them). For pycocotools they become
COCO results ``{image_id, category_id, bbox: [x, y, w, h], score}`` with::

    x = xmin - 1,  y = ymin - 1,  w = xmax - xmin + 1,  h = ymax - ymin + 1

the inverse of :mod:`ssd300.coco`'s reading of COCO boxes. pycocotools'
IoU uses ``w * h`` without a ``+1``; on boxes converted this way it equals
the VOC evaluation's ``+1`` pixel IoU, so both metrics see the same overlaps.

The ground truth is built in memory from a :class:`ssd300.coco.CocoDataset`
(its COCO image and category ids, so a results file scores against the
original JSON too) or from a VOC ``XML_preprocessor``. Difficult VOC objects
and crowd boxes are given to pycocotools as ``iscrowd: 1``, its only way to
ignore a ground truth box. Annotation ids are renumbered from 1 because
pycocotools takes a match to an annotation id 0 (Roboflow numbers from 0)
for no match. For the metrics pycocotools gives on a file, load it with
``load_coco(..., evaluation=True)``: training's loader leaves out boxes of
no size, under one pixel or outside the image, which pycocotools counts as
misses (:func:`evaluate_dataset` reads a dataset loaded for training again
so).

pycocotools is imported when a function here is called; install it with
``pip install pycocotools``.
"""

import contextlib
import io
import json
import os
from dataclasses import dataclass, field

import numpy as np

from .atomic import atomic_path
from .errors import UserError

#: The 12 standard COCO detection statistics, in ``COCOeval.stats`` order.
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                   "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass
class CocoMetrics:
    """The result of :func:`evaluate_coco`.

    Attributes:
        stats: ``{name: value}`` for :data:`COCO_STAT_NAMES` (``AP`` is
            AP@[.50:.95]); ``-1`` where no ground truth falls in the range,
            pycocotools' convention.
        per_class: ``{class name: {"AP": AP@[.50:.95], "AP50": AP@.50}}``
            for the classes with ground truth.
        table: pycocotools' own 12-line summary, as it prints it.
        results: the COCO results list that was scored.
    """

    stats: dict
    per_class: dict
    table: str
    results: list = field(repr=False)


def _pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise UserError("COCO metrics need pycocotools: pip install pycocotools") from None
    return COCO, COCOeval


def _image_ids(dataset):
    """``{image key: COCO image id}``: the dataset's own ids, else 1, 2, ... in key order."""
    ids = getattr(dataset, "image_ids", None)
    if ids is not None:
        return dict(ids)
    return {key: i + 1 for i, key in enumerate(sorted(dataset.annotations))}


def _category_ids(dataset):
    """COCO category id of each label ``1 .. C`` (``None``: no category)."""
    ids = getattr(dataset, "category_ids", None)
    return tuple(ids) if ids is not None else tuple(range(1, len(dataset.classes) + 1))


def voc_to_coco_boxes(boxes):
    """``(N, 4)`` VOC pixel ``xmin, ymin, xmax, ymax`` -> COCO ``x, y, w, h``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2] - 1, boxes[:, 2:] - boxes[:, :2] + 1], axis=1)


def coco_ground_truth_dict(dataset):
    """The COCO JSON dict (``images``, ``annotations``, ``categories``) of a dataset's ground truth.

    Args:
        dataset: a :class:`ssd300.coco.CocoDataset` or an ``XML_preprocessor``
            (any object with ``annotations`` ``{key: voc.Annotation}`` and
            ``classes``). Difficult and crowd boxes get ``iscrowd: 1``.

    Returns:
        a dict that ``pycocotools.coco.COCO`` can index.
    """
    image_ids = _image_ids(dataset)
    cat_ids = _category_ids(dataset)
    areas = getattr(dataset, "areas", None)
    keys = list(dataset.annotations)
    images = [{"id": int(image_ids[k]), "file_name": k, "width": int(dataset.annotations[k].width),
               "height": int(dataset.annotations[k].height)} for k in keys]
    categories = [{"id": int(c), "name": name} for name, c in zip(dataset.classes, cat_ids)
                  if c is not None]
    anns = [dataset.annotations[k] for k in keys]
    counts = np.array([len(a.labels) for a in anns], dtype=np.int64)
    if counts.sum():
        boxes = voc_to_coco_boxes(np.concatenate([a.boxes for a in anns]))
        labels = np.concatenate([a.labels for a in anns]).astype(np.int64)
        ignore = np.concatenate([a.difficult for a in anns]).astype(bool)
        area = (np.concatenate([areas[k] for k in keys]) if areas is not None
                else boxes[:, 2] * boxes[:, 3])
    else:
        boxes, labels, ignore, area = np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0)
    img = np.repeat(np.array([image_ids[k] for k in keys], dtype=np.int64), counts)
    cat_of_label = np.array([-1] + [c if c is not None else -1 for c in cat_ids], dtype=np.int64)
    cats = cat_of_label[labels]
    annotations = [{"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "area": ar,
                    "iscrowd": ig}
                   for i, (im, c, b, ar, ig) in enumerate(zip(img.tolist(), cats.tolist(), boxes.tolist(),
                                                              area.tolist(), ignore.astype(int).tolist()))]
    return {"info": {"description": "ssd300 ground truth"}, "images": images,
            "annotations": annotations, "categories": categories}


def coco_ground_truth(dataset):
    """A ``pycocotools.coco.COCO`` of a dataset's ground truth (see :func:`coco_ground_truth_dict`)."""
    COCO, _ = _pycocotools()
    gt = COCO()
    gt.dataset = coco_ground_truth_dict(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _resolve_keys(detections, dataset):
    """COCO image id of each detection key: an image file name, its stem, or the id itself."""
    image_ids = _image_ids(dataset)
    stems = {}
    for key, image_id in image_ids.items():
        stems.setdefault(os.path.splitext(key)[0], []).append(image_id)
    by_id = set(image_ids.values())
    out, unknown = {}, []
    for key in detections:
        if key in image_ids:
            out[key] = image_ids[key]
        elif isinstance(key, str) and len(stems.get(key, ())) == 1:
            out[key] = stems[key][0]
        elif isinstance(key, (int, np.integer)) and int(key) in by_id:
            out[key] = int(key)
        else:
            unknown.append(key)
    if unknown:
        raise UserError(f"detections for {len(unknown)} images that the ground truth does not "
                        f"have, e.g. {unknown[:3]} (keys must be image file names, their stems "
                        f"or COCO image ids; load_coco(..., keep_empty=True) keeps the images "
                        f"without boxes)")
    return out


def coco_results(detections, dataset, bbox_decimals=3, score_decimals=6):
    """Detections as a COCO results list.

    Args:
        detections: ``{image key: (K, 6)}`` ``[label, score, xmin, ymin,
            xmax, ymax]``, VOC pixel convention; keys are image file names
            (``dataset.annotations`` keys), their stems, or COCO image ids.
        dataset: the ground truth (``CocoDataset`` or ``XML_preprocessor``).
        bbox_decimals, score_decimals: rounding of the written numbers.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``
        (labels whose class has no COCO category are left out).

    Raises:
        UserError: a key that is not an image of the dataset, or a label
            outside ``1 .. C``.
    """
    ids = _resolve_keys(detections, dataset)
    cat_ids = _category_ids(dataset)
    parts = [np.asarray(d, dtype=np.float64).reshape(-1, 6) for d in detections.values()]
    if not parts or not sum(len(p) for p in parts):
        return []
    rows = np.concatenate(parts)
    img = np.repeat(np.array([ids[k] for k in detections], dtype=np.int64), [len(p) for p in parts])
    labels = rows[:, 0].astype(np.int64)
    bad = (labels < 1) | (labels > len(cat_ids)) | (labels != rows[:, 0])
    if bad.any():
        raise UserError(f"detection labels must be integers 1 .. {len(cat_ids)}, got "
                        f"{np.unique(rows[bad, 0])[:5].tolist()}")
    cat_of_label = np.array([-1] + [c if c is not None else -1 for c in cat_ids], dtype=np.int64)
    cats = cat_of_label[labels]
    keep = cats >= 0
    boxes = np.round(voc_to_coco_boxes(rows[keep, 2:6]), bbox_decimals)
    scores = np.round(rows[keep, 1], score_decimals)
    return [{"image_id": i, "category_id": c, "bbox": b, "score": s}
            for i, c, b, s in zip(img[keep].tolist(), cats[keep].tolist(), boxes.tolist(), scores.tolist())]


def write_coco_results(results, path):
    """Write a COCO results list as JSON, atomically. Returns ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf8") as f:
        json.dump(results, f)
    return path


def evaluate_coco(detections, dataset, results_json=None):
    """Score detections with pycocotools' ``COCOeval`` (bounding boxes).

    Args:
        detections: ``{image key: (K, 6)}``, see :func:`coco_results`; or an
            already built COCO results list.
        dataset: the ground truth: a ``CocoDataset`` (its images, including
            empty ones kept with ``keep_empty=True``, are the evaluated set;
            load it with ``evaluation=True`` to score every box of the file,
            as pycocotools does) or an ``XML_preprocessor``.
        results_json: also write the results there (atomically).

    Returns:
        :class:`CocoMetrics`. pycocotools' printing is captured into
        ``table``.
    """
    COCO, COCOeval = _pycocotools()
    results = detections if isinstance(detections, list) else coco_results(detections, dataset)
    if results_json is not None:
        write_coco_results(results, results_json)
    gt = coco_ground_truth(dataset)
    return _evaluate(gt, results, dataset, COCO, COCOeval)


def evaluate_coco_results_file(results_json, dataset):
    """Score a COCO results JSON file (as :func:`write_coco_results` writes) against a dataset."""
    COCO, COCOeval = _pycocotools()
    path = os.fspath(results_json)
    try:
        with open(path, encoding="utf8") as f:
            results = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read COCO results ({e})") from None
    if not isinstance(results, list):
        raise UserError(f"{path}: COCO results must be a JSON list")
    return _evaluate(coco_ground_truth(dataset), results, dataset, COCO, COCOeval)


def _evaluate(gt, results, dataset, COCO, COCOeval):  # noqa: N803  (pycocotools' class names)
    known = set(gt.getImgIds())
    strays = sorted({r["image_id"] for r in results} - known)
    if strays:
        raise UserError(f"results for {len(strays)} images not in the ground truth, e.g. {strays[:3]}")
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        if results:
            dt = gt.loadRes([dict(r) for r in results])  # loadRes adds keys to the dicts
        else:  # loadRes cannot take an empty list
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"],
                          "annotations": []}
            dt.createIndex()
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        mark = captured.tell()
        evaluator.summarize()
    table = captured.getvalue()[mark:].rstrip("\n")
    stats = {name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats)}

    # precision: [iou threshold, recall point, category, area range, max dets]
    precision = evaluator.eval["precision"]
    params = evaluator.params
    names = {c: name for name, c in zip(dataset.classes, _category_ids(dataset)) if c is not None}
    area_all = list(params.areaRngLbl).index("all")
    dets_max = len(params.maxDets) - 1
    at50 = int(np.argmin(np.abs(np.asarray(params.iouThrs) - 0.5)))
    per_class = {}
    for k, cat in enumerate(params.catIds):
        p = precision[:, :, k, area_all, dets_max]
        if (p > -1).any():
            per_class[names.get(cat, str(cat))] = {"AP": float(p[p > -1].mean()),
                                                   "AP50": float(p[at50][p[at50] > -1].mean())}
    return CocoMetrics(stats=stats, per_class=per_class, table=table, results=results)


def evaluation_ground_truth(dataset):
    """The ground truth that pycocotools would score: a ``CocoDataset`` loaded for
    training is read again with ``load_coco(..., evaluation=True)``.

    Training leaves out boxes of no size, under one pixel or outside the
    image, which pycocotools counts as misses; scoring without them would
    over-state the metrics. The classes stay the dataset's (a record of
    another category is skipped with a warning); every image of the file is
    kept. Other datasets (``XML_preprocessor``) are returned as they are.
    """
    from .coco import CocoDataset, load_coco

    if not isinstance(dataset, CocoDataset) or dataset.evaluation:
        return dataset
    return load_coco(dataset.annotation_file, classes=dataset.classes, on_error="warn", evaluation=True)


def evaluate_dataset(detector, dataset, image_dir=None, batch_size=8, use_07_metric=True,
                     results_json=None, progress=False):
    """Detect on every image of a dataset and score with both the VOC and the COCO rules.

    Each picture is read as training reads it and its detections are given
    in its annotation's ``(width, height)`` frame, the ground truth's (see
    ``Detector.detect_files``). The VOC table is keyed by file name, so
    ``a.jpg`` and ``a.png`` stay two images.

    Args:
        detector: a :class:`ssd300.detect.Detector` whose classes are
            ``dataset.classes``.
        dataset: a ``CocoDataset``, best loaded with ``load_coco(...,
            evaluation=True)`` (one loaded for training is read again so,
            see :func:`evaluation_ground_truth`), or an ``XML_preprocessor``.
        image_dir: the image folder; ``None``: ``dataset.image_dir`` (for
            an ``XML_preprocessor`` pass ``<voc_root>/JPEGImages``).
        batch_size, progress: as ``Detector.detect_files``.
        use_07_metric: the VOC table's 11-point (VOC2007) or area AP.
        results_json: also write the COCO results there.

    Returns:
        ``(detections, voc_result, coco_metrics)``: ``{image key: (K, 6)}``
        in pixels, :func:`ssd300.evaluation.evaluate_detections`'s result,
        and :class:`CocoMetrics`.

    Raises:
        UserError: the detector's classes are not the dataset's.
    """
    from .evaluation import evaluate_detections, ground_truth_from_annotations

    if tuple(detector.classes) != tuple(dataset.classes):
        raise UserError(f"the model's classes {tuple(detector.classes)} are not the dataset's "
                        f"{tuple(dataset.classes)}")
    image_dir = image_dir if image_dir is not None else dataset.image_dir
    dataset = evaluation_ground_truth(dataset)
    keys = sorted(dataset.annotations)
    frames = [(dataset.annotations[k].width, dataset.annotations[k].height) for k in keys]
    found, _ = detector.detect_files([os.path.join(image_dir, k) for k in keys], batch_size, progress,
                                     sizes=frames)
    detections = dict(zip(keys, found))
    voc = evaluate_detections(detections, ground_truth_from_annotations(dataset.annotations, by_file_name=True),
                              use_07_metric=use_07_metric)
    return detections, voc, evaluate_coco(detections, dataset, results_json)


def format_coco_table(metrics, per_class=True):
    """The 12 COCO statistics (and per-class AP / AP50), as text."""
    labels = {"AP": "AP @[.50:.95]", "AP50": "AP @.50", "AP75": "AP @.75", "APs": "AP small",
              "APm": "AP medium", "APl": "AP large", "AR1": "AR max 1", "AR10": "AR max 10",
              "AR100": "AR max 100", "ARs": "AR small", "ARm": "AR medium", "ARl": "AR large"}
    rows = [f"{'COCO metric':<16} {'value':>7}"]
    rows += [f"{labels[n]:<16} {metrics.stats[n]:7.4f}" for n in COCO_STAT_NAMES]
    if per_class and metrics.per_class:
        rows.append("")
        rows.append(f"{'class':<16} {'AP':>7} {'AP50':>7}")
        rows += [f"{name:<16} {v['AP']:7.4f} {v['AP50']:7.4f}" for name, v in metrics.per_class.items()]
    return "\n".join(rows)
