"""COCO metrics from pycocotools: known answers, agreement with the VOC evaluation, results files."""

import contextlib
import copy
import io
import json
import os
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("pycocotools")

from pycocotools import mask as mask_utils  # noqa: E402

from ssd300.box_ops import pairwise_iou  # noqa: E402
from ssd300.coco import load_coco  # noqa: E402
from ssd300.coco_eval import (COCO_STAT_NAMES, coco_ground_truth, coco_results,  # noqa: E402
                              evaluate_coco, evaluate_coco_results_file, evaluate_dataset,
                              format_coco_table,
                              voc_to_coco_boxes, write_coco_results)
from ssd300.errors import UserError  # noqa: E402
from ssd300.evaluation import evaluate_detections, ground_truth_from_annotations  # noqa: E402
from ssd300.voc import Annotation, AnnotationError, XML_preprocessor  # noqa: E402
from tests.conftest import shared_path  # noqa: E402
from tests.test_evaluation import (FRAME_CASES, TargetDetector, stored_left_to_right,  # noqa: E402
                                   write_frame_pictures)


def perfect(annotations):
    """One detection per ground truth box, exactly on it, score 1."""
    return {k: np.concatenate([a.labels[:, None], np.ones((len(a.labels), 1)), a.boxes], axis=1)
            for k, a in annotations.items()}


def synthetic_gt(rng, images=300, classes=5, p_difficult=0.0):
    """Random integer VOC boxes in random images, as an ``XML_preprocessor``-like object."""
    ann = {}
    for i in range(images):
        width, height = (int(v) for v in rng.integers(200, 500, 2))
        n = int(rng.integers(1, 7))
        w, h = rng.uniform(8, width / 2, n), rng.uniform(8, height / 2, n)
        x, y = rng.uniform(1, width - w), rng.uniform(1, height - h)
        ann[f"{i:05d}.jpg"] = Annotation(f"{i:05d}.jpg", width, height,
                                         np.round(np.stack([x, y, x + w, y + h], axis=1)),
                                         rng.integers(1, classes + 1, n), rng.random(n) < p_difficult)
    return SimpleNamespace(annotations=ann, classes=tuple(f"c{i}" for i in range(classes)))


def random_detections(annotations, rng, num_classes, p_detect=0.8, jitter=0.1, fp_per_image=3):
    """Jittered copies of most ground truth boxes plus random false positives, random scores."""
    out = {}
    for key, a in annotations.items():
        hit = rng.random(len(a.labels)) < p_detect
        wh = a.boxes[hit, 2:] - a.boxes[hit, :2] + 1
        boxes = a.boxes[hit] + rng.normal(0, jitter, (hit.sum(), 4)) * np.concatenate([wh, wh], 1)
        m = rng.poisson(fp_per_image)
        x0, y0 = rng.uniform(1, a.width * 0.7, m), rng.uniform(1, a.height * 0.7, m)
        fp = np.stack([x0, y0, np.minimum(x0 + rng.uniform(10, a.width / 2, m), a.width),
                       np.minimum(y0 + rng.uniform(10, a.height / 2, m), a.height)], axis=1)
        labels = np.concatenate([a.labels[hit], rng.integers(1, num_classes + 1, m)])
        scores = np.concatenate([rng.uniform(0.3, 1, hit.sum()), rng.uniform(0, 0.9, m)])
        out[key] = np.concatenate([labels[:, None], scores[:, None], np.concatenate([boxes, fp])], axis=1)
    return out


def voc_and_coco_ap50(dataset, detections):
    """(VOC area-under-curve AP per class, COCO AP50 per class, VOC mAP, COCO AP50)."""
    stems = {k.rsplit(".", 1)[0]: v for k, v in detections.items()}
    voc = evaluate_detections(stems, ground_truth_from_annotations(dataset.annotations), use_07_metric=False)
    coco = evaluate_coco(detections, dataset)
    voc_ap = np.array([voc["ap"][i + 1] for i in range(len(dataset.classes))])
    coco_ap = np.array([coco.per_class[c]["AP50"] for c in dataset.classes])
    return voc_ap, coco_ap, voc["map"], coco.stats["AP50"]


def test_perfect_detections_score_one():
    rng = np.random.default_rng(0)
    ds = synthetic_gt(rng, images=50)
    metrics = evaluate_coco(perfect(ds.annotations), ds)
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "ARs", "ARm", "ARl"):
        assert metrics.stats[name] == pytest.approx(1.0), name
    assert set(metrics.stats) == set(COCO_STAT_NAMES)
    assert all(v["AP"] == pytest.approx(1.0) for v in metrics.per_class.values())
    lines = metrics.table.splitlines()
    assert len(lines) == 12 and lines[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95")
    assert lines[0].endswith("= 1.000")
    assert "AP @[.50:.95]     1.0000" in format_coco_table(metrics)
    # No detections at all: every AP and AR is 0.
    empty = evaluate_coco({}, ds)
    assert empty.stats["AP"] == 0 and empty.stats["AR100"] == 0 and empty.results == []


def test_hand_computed_ap():
    """One image, two dogs; detections: a miss (0.9), a hit (0.8), a hit (0.7).

    Precision after each: 0, 1/2, 2/3 at recall 0, 0.5, 1. The precision
    envelope is 2/3 at every recall level, so AP50 is 2/3 by COCO's 101
    points and by VOC's area alike. At IoU 0.75 the second hit (IoU 0.6) no
    longer counts: precision 1/2 up to recall 0.5 (51 of the 101 points), 0
    after, AP75 = 0.5 * 51 / 101.
    """
    gt = SimpleNamespace(classes=("dog",), annotations={"a.jpg": Annotation(
        "a.jpg", 100, 100, np.array([[1.0, 1, 40, 40], [51, 51, 100, 100]]), np.array([1, 1]),
        np.array([False, False]))})
    # IoU of [51, 51, 90, 100] with [51, 51, 100, 100] (+1 pixel): 40 * 50 / (50 * 50) = 0.8 ...
    # [1, 1, 40, 40] vs [1, 1, 40, 25]: 40 * 25 / 1600 = 0.625.
    det = {"a.jpg": np.array([[1, 0.9, 60, 1, 99, 30], [1, 0.8, 51, 51, 90, 100], [1, 0.7, 1, 1, 40, 25]])}
    metrics = evaluate_coco(det, gt)
    assert metrics.stats["AP50"] == pytest.approx(2 / 3)
    assert metrics.stats["AP75"] == pytest.approx(0.5 * 51 / 101)
    # Both boxes are "medium" (32^2 to 96^2 pixels): no small or large ones, which
    # pycocotools reports as -1.
    assert metrics.stats["APm"] == metrics.stats["AP"] and metrics.stats["APs"] == metrics.stats["APl"] == -1
    voc = evaluate_detections({"a": det["a.jpg"]}, ground_truth_from_annotations(gt.annotations),
                              use_07_metric=False)
    assert voc["map"] == pytest.approx(2 / 3)


def test_iou_conventions_agree():
    """pycocotools' IoU of boxes converted by voc_to_coco_boxes equals the VOC +1 pixel IoU."""
    rng = np.random.default_rng(1)
    a = np.round(rng.uniform(1, 200, (50, 2)))
    a = np.concatenate([a, a + np.round(rng.uniform(0, 80, (50, 2)))], axis=1)
    b = a + rng.integers(-10, 10, (50, 4))
    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2])
    coco = mask_utils.iou(voc_to_coco_boxes(a).tolist(), voc_to_coco_boxes(b).tolist(), [0] * 50)
    np.testing.assert_allclose(coco, pairwise_iou(a, b, offset=1.0), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(voc_to_coco_boxes([[10, 20, 109, 69]]), [[9, 19, 100, 50]])


def test_ap50_agrees_with_voc_on_synthetic_ground_truth():
    """COCO AP50 (pycocotools) against the VOC area-under-curve AP on the same detections.

    The overlaps are identical (test_iou_conventions_agree); what differs:
    COCO samples the precision envelope at 101 recall points where VOC2010+
    integrates it exactly, and a detection whose best ground truth is taken
    is a false positive for VOC but may match the next-best free one for
    COCO. Measured over 4 seeds: mAP within 0.0010, per class within 0.004.
    With 20% difficult objects (given to pycocotools as crowd, which it
    matches by intersection over the detection's area, so it ignores a
    little more): mAP within 0.0043, per class within 0.013.
    """
    for p_difficult, map_bound, class_bound in ((0.0, 0.002, 0.006), (0.2, 0.006, 0.016)):
        for seed in range(2):
            rng = np.random.default_rng(seed)
            ds = synthetic_gt(rng, p_difficult=p_difficult)
            det = random_detections(ds.annotations, rng, 5)
            voc_ap, coco_ap, voc_map, coco_map = voc_and_coco_ap50(ds, det)
            assert 0.4 < voc_map < 0.7  # non-trivial detections
            assert abs(voc_map - coco_map) < map_bound
            assert np.abs(voc_ap - coco_ap).max() < class_bound
            assert np.abs(voc_ap - coco_ap).max() > 0  # the interpolations do differ


def test_ap50_agrees_with_voc_on_roboflow_export():
    """The same comparison over the real 1004-image Roboflow export (3072 boxes, 20 classes).

    Measured over 4 seeds and jitters 0.05 / 0.15: mAP within 0.0024, per
    class within 0.008 (101-point sampling vs area; matching of crowded
    scenes, see the synthetic test).
    """
    folder = shared_path("voc2007_roboflow_coco", "valid")
    ds = load_coco(folder / "_annotations.coco.json", keep_empty=True)
    rng = np.random.default_rng(1)
    voc_ap, coco_ap, voc_map, coco_map = voc_and_coco_ap50(
        ds, random_detections(ds.annotations, rng, 20, jitter=0.15))
    assert 0.3 < voc_map < 0.6
    assert abs(voc_map - coco_map) < 0.004
    assert np.abs(voc_ap - coco_ap).max() < 0.01


def test_results_json_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    ds = synthetic_gt(rng, images=40)
    det = random_detections(ds.annotations, rng, 5)
    path = tmp_path / "out" / "results.json"
    metrics = evaluate_coco(det, ds, results_json=path)
    results = json.loads(path.read_text())
    assert results == metrics.results and len(results) == sum(len(d) for d in det.values())
    first = det["00000.jpg"][0]
    assert results[0] == {"image_id": 1, "category_id": int(first[0]),
                          "bbox": np.round(voc_to_coco_boxes(first[2:6])[0], 3).tolist(),
                          "score": round(float(first[1]), 6)}
    again = evaluate_coco_results_file(path, ds)  # pycocotools reads the file as written
    assert again.stats == metrics.stats
    # Keys may be file names, their stems or COCO image ids: the same results.
    by_id = {i + 1: det[k] for i, k in enumerate(sorted(det))}
    by_stem = {k[:-4]: v for k, v in det.items()}
    assert coco_results(by_id, ds) == coco_results(by_stem, ds) == results
    with pytest.raises(UserError, match="images that the ground truth does not have"):
        coco_results({"nope.jpg": det["00000.jpg"]}, ds)
    with pytest.raises(UserError, match="labels must be integers 1 .. 5"):
        coco_results({"00000.jpg": np.array([[6, 0.5, 1, 1, 5, 5]])}, ds)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="must be a JSON list"):
        evaluate_coco_results_file(tmp_path / "bad.json", ds)


def test_coco_ids_of_the_file_are_kept(tmp_path):
    """Results carry the file's image and category ids; pycocotools scores them against the file."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    doc = {"images": [{"id": 40, "file_name": "a.jpg", "width": 100, "height": 80},
                      {"id": 7, "file_name": "b.jpg", "width": 100, "height": 80}],
           "categories": [{"id": 0, "name": "objects"}, {"id": 3, "name": "cat"}, {"id": 9, "name": "dog"}],
           "annotations": [{"id": 0, "image_id": 40, "category_id": 9, "bbox": [10, 10, 30, 20]},
                           {"id": 1, "image_id": 7, "category_id": 3, "bbox": [0, 0, 50, 50]},
                           {"id": 2, "image_id": 7, "category_id": 9, "bbox": [60, 20, 40, 60]}]}
    for a in doc["annotations"]:  # what pycocotools' own loader needs
        a.update(area=a["bbox"][2] * a["bbox"][3], iscrowd=0)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(doc))
    ds = load_coco(ann)
    det = perfect(ds.annotations)
    det["b.jpg"] = np.concatenate([det["b.jpg"], [[1, 0.5, 60, 1, 99, 30]]])  # a false cat
    metrics = evaluate_coco(det, ds, results_json=tmp_path / "res.json")
    results = json.loads((tmp_path / "res.json").read_text())
    assert {(r["image_id"], r["category_id"]) for r in results} == {(40, 9), (7, 3), (7, 9)}
    assert [r["bbox"] for r in results if r["image_id"] == 40] == [[10, 10, 30, 20]]
    # The original file with pycocotools' own loaders. Its annotation ids start at 0, which
    # pycocotools takes for "no match": the in-memory ground truth renumbers them.
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        evaluator = COCOeval(gt, gt.loadRes(str(tmp_path / "res.json")), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert metrics.stats["AP50"] == 1.0
    assert evaluator.stats[1] < 1.0  # annotation id 0 never counts as matched there


def test_voc_ground_truth_with_difficult_objects():
    """A VOC XML_preprocessor scored by pycocotools: difficult objects are ignored."""
    root = shared_path("voc2007_sample", "VOC2007")
    prep = XML_preprocessor(root / "Annotations")
    gt = coco_ground_truth(prep)
    assert len(gt.getImgIds()) == 13 and len(gt.getAnnIds()) == 59
    assert sum(a["iscrowd"] for a in gt.dataset["annotations"]) == 9
    assert perfect(prep.annotations)  # sanity
    metrics = evaluate_coco(perfect(prep.annotations), prep)
    assert metrics.stats["AP"] == pytest.approx(1.0)
    # Only the 50 non-difficult objects detected: still perfect, as for the VOC devkit.
    easy = {k: np.concatenate([a.labels[~a.difficult, None], np.ones(((~a.difficult).sum(), 1)),
                               a.boxes[~a.difficult]], axis=1) for k, a in prep.annotations.items()}
    assert evaluate_coco(easy, prep).stats["AP"] == pytest.approx(1.0)
    # Only the difficult ones: nothing to gain, nothing lost (no false positives).
    hard = {k: np.concatenate([a.labels[a.difficult, None], np.ones((a.difficult.sum(), 1)),
                               a.boxes[a.difficult]], axis=1) for k, a in prep.annotations.items()}
    assert evaluate_coco(hard, prep).stats["AP"] == 0.0
    voc = evaluate_detections({k[:-4]: v for k, v in hard.items()},
                              ground_truth_from_annotations(prep.annotations))
    assert voc["map"] == 0.0


class FakeDetector:
    """Answers every file with its ground truth boxes (what ``Detector.detect_files`` returns)."""

    def __init__(self, dataset, image_dir):
        self.classes = dataset.classes
        self.truth = {os.path.join(image_dir, k): d for k, d in perfect(dataset.annotations).items()}
        self.asked = []

    def detect_files(self, paths, batch_size=8, progress=False, sizes=None):
        self.asked += paths
        self.sizes = sizes
        return [self.truth[p] for p in paths], list(sizes)


def test_evaluate_dataset(tmp_path):
    """Detection over the dataset's images, then the VOC table and the COCO metrics."""
    root = shared_path("voc2007_sample", "VOC2007")
    prep = XML_preprocessor(root / "Annotations")
    detector = FakeDetector(prep, str(root / "JPEGImages"))
    det, voc, coco = evaluate_dataset(detector, prep, str(root / "JPEGImages"),
                                      results_json=tmp_path / "r.json")
    assert sorted(detector.asked) == sorted(str(root / "JPEGImages" / k) for k in prep.data)
    # Each picture's frame is its annotation's size.
    assert detector.sizes == [(prep.annotations[k].width, prep.annotations[k].height) for k in sorted(prep.data)]
    assert voc["map"] == 1.0 and coco.stats["AP"] == pytest.approx(1.0)
    assert len(json.loads((tmp_path / "r.json").read_text())) == 59
    detector.classes = detector.classes[:-1]
    with pytest.raises(UserError, match="are not the dataset's"):
        evaluate_dataset(detector, prep, str(root / "JPEGImages"))


def pycocotools_stats(annotation_file, results):
    """The 12 statistics of pycocotools' own loaders on the file and a results list."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return dict(zip(COCO_STAT_NAMES, evaluator.stats.tolist()))


@pytest.mark.parametrize("bad_box", [[296.65, 388.33, 1.03, 0.0],  # instances_train2017 annotation 918
                                     [26, 51, 487, 294]])  # 13 pixels past the image's right edge
def test_degenerate_ground_truth_scored_as_pycocotools(tmp_path, bad_box):
    """Two perfect detections and a third ground truth box that training refuses.

    pycocotools counts the third box as a miss: AP 0.6634, AR100 2/3 (audit
    finding 2). Training's filters must not drop it from the evaluation.
    """
    doc = {"images": [{"id": 200365, "file_name": "a.jpg", "width": 500, "height": 332},
                      {"id": 2, "file_name": "b.jpg", "width": 500, "height": 332}],
           "categories": [{"id": 58, "name": "potted plant"}],
           "annotations": [{"id": 918, "image_id": 200365, "category_id": 58, "bbox": bad_box,
                            "area": bad_box[2] * bad_box[3], "iscrowd": 0},
                           {"id": 919, "image_id": 200365, "category_id": 58, "bbox": [10, 10, 100, 100],
                            "area": 10000.0, "iscrowd": 0},
                           {"id": 920, "image_id": 2, "category_id": 58, "bbox": [50, 50, 100, 80],
                            "area": 8000.0, "iscrowd": 0}]}
    path = tmp_path / "x.json"
    path.write_text(json.dumps(doc))
    detections = {"a.jpg": np.array([[1, 0.9, 11, 11, 110, 110]]), "b.jpg": np.array([[1, 0.8, 51, 51, 150, 130]])}
    with pytest.warns(UserWarning, match="1 boxes of no size, under one pixel or outside their image are kept"):
        ds = load_coco(path, evaluation=True)
    metrics = evaluate_coco(detections, ds)
    assert metrics.stats == pycocotools_stats(path, metrics.results)
    assert metrics.stats["AP"] == pytest.approx(0.6634, abs=5e-5)
    assert metrics.stats["AR100"] == pytest.approx(2 / 3)
    with pytest.raises(AnnotationError, match="annotation id 918"):
        load_coco(path)  # training's loader refuses the box
    # evaluate_dataset given a dataset loaded for training reads the file again as pycocotools does.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        training = load_coco(path, on_error="warn")
    assert evaluate_coco(detections, training).stats["AP"] == pytest.approx(1.0)  # the box is gone there
    detector = FakeDetector(training, str(tmp_path))
    detector.truth = {str(tmp_path / k): d for k, d in detections.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, voc, coco = evaluate_dataset(detector, training, str(tmp_path), use_07_metric=False)
    assert coco.stats == metrics.stats
    assert voc["num_positives"] == {1: 3} and voc["ap"][1] == pytest.approx(2 / 3)


def test_degenerate_boxes_random_against_pycocotools(tmp_path):
    """Random ground truth with every kind of box training refuses (zero, negative and
    sub-pixel sizes, partly outside the image), crowd boxes, images without boxes, and
    random detections: the 12 statistics equal pycocotools' own on the file."""
    rng = np.random.default_rng(5)
    images, annotations, detections = [], [], {}
    kinds = ["normal"] * 6 + ["zero_w", "zero_h", "negative", "sub_pixel", "outside", "edge", "crowd"]
    for i in range(40):
        width, height = (int(v) for v in rng.integers(120, 400, 2))
        name = f"{i:03d}.jpg"
        images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
        rows = []
        for _ in range(int(rng.integers(0, 6))):
            kind = kinds[rng.integers(len(kinds))]
            w, h = (float(v) for v in rng.integers(10, 60, 2))
            x, y = float(rng.integers(0, width - w)), float(rng.integers(0, height - h))
            if kind == "zero_w":
                w = 0.0
            elif kind == "zero_h":
                h = 0.0
            elif kind == "negative":
                w = -w
            elif kind == "sub_pixel":
                w = 0.5
            elif kind == "outside":
                x = width - w / 2  # half of it past the right edge
            elif kind == "edge":
                x = -0.5  # within the tolerance that training clips
            box = [x, y, w, h]
            label = int(rng.integers(1, 4))
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": [1, 4, 9][label - 1],
                                "bbox": box, "area": w * h, "iscrowd": int(kind == "crowd")})
            if kind != "zero_w" and rng.random() < 0.8:  # a detection near the box as written
                jitter = rng.normal(0, 3, 4)
                bw, bh = max(abs(w), 2) + jitter[2], h + jitter[3]
                rows.append([label, rng.uniform(0.2, 1), x + 1 + jitter[0], y + 1 + jitter[1],
                             x + jitter[0] + bw, y + jitter[1] + bh])
        for _ in range(int(rng.poisson(1))):  # false positives
            x0, y0 = rng.uniform(1, width / 2), rng.uniform(1, height / 2)
            rows.append([int(rng.integers(1, 4)), rng.uniform(0, 0.9), x0, y0, x0 + 30, y0 + 20])
        detections[name] = np.array(rows).reshape(-1, 6)
    doc = {"images": images, "annotations": annotations,
           "categories": [{"id": 0, "name": "objects"}, {"id": 1, "name": "a"}, {"id": 4, "name": "b"},
                          {"id": 9, "name": "c"}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="boxes of no size"):
        ds = load_coco(path, evaluation=True)
    assert ds.classes == ("a", "b", "c") and len(ds.annotations) == 40  # every image, empty ones too
    metrics = evaluate_coco(detections, ds)
    assert metrics.stats == pycocotools_stats(path, metrics.results)
    assert 0.2 < metrics.stats["AP50"] < 0.9


def test_evaluate_dataset_scores_in_the_annotation_frame(tmp_path):
    """COCO side of the frame check (see test_evaluation): the EXIF picture annotated as
    stored and the picture stored at half its annotated size score AP 1 by both rules."""
    write_frame_pictures(tmp_path)
    classes = sorted({case[4] for case in FRAME_CASES})
    doc = {"images": [{"id": i + 1, "file_name": name, "width": w, "height": h}
                      for i, (name, _, (w, h), _, _, _) in enumerate(FRAME_CASES)],
           "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)],
           "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": classes.index(cls) + 1,
                            "bbox": voc_to_coco_boxes(box)[0].tolist(), "area": 1000.0, "iscrowd": 0}
                           for i, (_, _, _, box, cls, _) in enumerate(FRAME_CASES)]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(doc))
    ds = load_coco(path, tmp_path, evaluation=True)
    keys = sorted(ds.annotations)
    detector = TargetDetector(ds.classes, [(ds.annotations[k].labels[0], ds.data[k][0, :4]) for k in keys])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        detections, voc, coco = evaluate_dataset(detector, ds, batch_size=1)
    for name, _, _, box, _, _ in FRAME_CASES:
        np.testing.assert_allclose(detections[name][0, 2:], box, rtol=1e-12)
    assert voc["map"] == 1.0 and coco.stats["AP"] == pytest.approx(1.0)
    assert any("1 images have EXIF orientation" in str(w.message) for w in record)
    assert stored_left_to_right(detector.batches[0][0]) > 300  # a.jpg as stored


def test_evaluate_dataset_keeps_images_with_the_same_stem(tmp_path):
    """a.jpg and a.png in one COCO file are two images in both tables."""
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100},
                      {"id": 2, "file_name": "a.png", "width": 100, "height": 100}],
           "categories": [{"id": 1, "name": "cat"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500},
                           {"id": 2, "image_id": 2, "category_id": 1, "bbox": [50, 50, 50, 50], "area": 2500}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(doc))
    ds = load_coco(path, evaluation=True)
    detector = FakeDetector(ds, str(tmp_path))
    detector.truth[str(tmp_path / "a.png")] = np.zeros((0, 6))  # a.png's cat is missed
    detections, voc, coco = evaluate_dataset(detector, ds, use_07_metric=False)
    assert sorted(detections) == ["a.jpg", "a.png"]
    assert voc["num_positives"] == {1: 2} and voc["ap"][1] == pytest.approx(0.5)
    assert coco.stats["AR100"] == pytest.approx(0.5)
