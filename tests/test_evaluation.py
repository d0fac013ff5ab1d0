"""VOC evaluation: cases worked out by hand, and the whole VOC2007 test ground truth."""

import numpy as np
import pytest

from ssd300.evaluation import (detections_to_pixels, evaluate_detections, format_ap_table,
                               load_ground_truth_json, voc_ap, write_devkit_results)
from ssd300.voc import VOC_CLASSES
from tests.conftest import shared_path


def gt(boxes, labels, difficult=None):
    return {"boxes": np.array(boxes, float), "labels": np.array(labels),
            "difficult": np.array(difficult if difficult is not None else [False] * len(labels))}


def test_hand_worked_difficult_and_duplicates():
    ground_truth = {"img": gt([[10, 10, 50, 50], [100, 100, 140, 140], [200, 10, 260, 80]],
                              [1, 1, 2], [False, True, False])}
    detections = {"img": np.array([
        [1, 0.9, 11, 11, 50, 50],      # TP: the non-difficult object
        [1, 0.8, 10, 12, 49, 50],      # FP: second match to the same object
        [1, 0.7, 100, 100, 141, 139],  # ignored: matches the difficult object
        [1, 0.6, 300, 300, 320, 320],  # FP: no overlap
        [2, 0.95, 0, 0, 5, 5],         # FP
        [2, 0.5, 200, 10, 260, 80],    # TP
    ])}
    for metric in (True, False):
        result = evaluate_detections(detections, ground_truth, use_07_metric=metric)
        assert result["ap"][1] == pytest.approx(1.0)
        assert result["ap"][2] == pytest.approx(0.5)
        assert result["map"] == pytest.approx(0.75)
        assert result["num_positives"] == {1: 1, 2: 1}


def test_07_and_area_metrics_differ_as_computed_by_hand():
    ground_truth = {"a": gt([[0, 0, 9, 9]], [3]), "b": gt([[0, 0, 9, 9]], [3])}
    detections = {"a": np.array([[3, 0.9, 0, 0, 9, 9], [3, 0.8, 50, 50, 60, 60]]),
                  "b": np.array([[3, 0.7, 0, 0, 9, 9]])}
    # recall [.5, .5, 1], precision [1, .5, 2/3]
    assert evaluate_detections(detections, ground_truth)["ap"][3] == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert evaluate_detections(detections, ground_truth, use_07_metric=False)["ap"][3] == \
        pytest.approx(0.5 + 0.5 * 2 / 3)
    np.testing.assert_allclose(voc_ap([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3], False), 0.5 + 1 / 3)


def test_plus_one_pixel_convention():
    ground_truth = {"a": gt([[1, 1, 10, 20]], [1])}
    # Inclusive pixels: 100 / (100 + 200 - 100) = 0.5 -> a match; without +1 it is 81/171.
    assert evaluate_detections({"a": np.array([[1, 0.9, 1, 1, 10, 10]])}, ground_truth)["map"] == 1.0
    assert evaluate_detections({"a": np.array([[1, 0.9, 1, 1, 10, 9]])}, ground_truth)["map"] == 0.0


def test_no_detections_and_class_without_objects():
    ground_truth = {"a": gt([[1, 1, 10, 10], [5, 5, 9, 9]], [1, 2], [False, True])}
    result = evaluate_detections({}, ground_truth)
    assert result["ap"] == {1: 0.0} and result["map"] == 0.0
    with pytest.raises(ValueError, match="without ground truth"):
        evaluate_detections({"zzz": np.zeros((0, 6))}, ground_truth)


@pytest.fixture(scope="module")
def voc_test():
    return load_ground_truth_json(shared_path("voc2007_test_ground_truth.json.gz"), VOC_CLASSES)


def perfect_detections(ground_truth):
    return {k: np.concatenate([v["labels"][:, None], np.ones((len(v["labels"]), 1)), v["boxes"]], axis=1)
            for k, v in ground_truth.items()}


def test_voc2007_ground_truth_against_itself(voc_test):
    ground_truth, sizes = voc_test
    assert len(ground_truth) == 4952
    assert sum(len(v["labels"]) for v in ground_truth.values()) == 14976
    assert sum(int(v["difficult"].sum()) for v in ground_truth.values()) == 2944
    detections = perfect_detections(ground_truth)
    for metric in (True, False):
        result = evaluate_detections(detections, ground_truth, use_07_metric=metric)
        assert len(result["ap"]) == 20
        assert result["map"] == pytest.approx(1.0)


def test_voc2007_dropped_and_displaced_detections(voc_test):
    ground_truth, _ = voc_test
    detections = perfect_detections(ground_truth)
    rng = np.random.default_rng(0)
    # Keep only half the dog detections (by image): dog recall ~0.5, precision 1.
    dog = VOC_CLASSES.index("dog") + 1
    dropped = {k: (v[(v[:, 0] != dog) | (rng.random(len(v)) < 0.5)]) for k, v in detections.items()}
    result = evaluate_detections(dropped, ground_truth, use_07_metric=False)
    assert 0.4 < result["ap"][dog] < 0.6
    assert all(result["ap"][c] == pytest.approx(1.0) for c in result["ap"] if c != dog)
    # Shift every box by its own size: nothing matches any more.
    shifted = {}
    for k, v in detections.items():
        w = v[:, 4] - v[:, 2]
        s = v.copy()
        s[:, [2, 4]] += w[:, None] * 1.5
        shifted[k] = s
    assert evaluate_detections(shifted, ground_truth)["map"] < 0.05
    # Lower scores for half of the true detections and add false ones above them.
    noisy = {k: np.concatenate([v, v + [0, 1, 400, 400, 400, 400]]) for k, v in detections.items()}
    assert 0.3 < evaluate_detections(noisy, ground_truth)["map"] < 0.8


def test_helpers(tmp_path):
    results = [np.array([[1, 0.9, 0.1, 0.2, 0.5, 0.6]]), np.zeros((0, 6))]
    det = detections_to_pixels(results, ["a", "b"], [(200, 100), (50, 50)])
    np.testing.assert_allclose(det["a"], [[1, 0.9, 20, 20, 100, 60]])
    assert det["b"].shape == (0, 6)
    files = write_devkit_results(det, ("cat", "dog"), tmp_path)
    assert [p.rsplit("/", 1)[1] for p in files] == ["comp4_det_test_cat.txt", "comp4_det_test_dog.txt"]
    assert (tmp_path / "comp4_det_test_cat.txt").read_text() == "a 0.900000 20.0 20.0 100.0 60.0\n"
    table = format_ap_table({"ap": {1: 0.5}, "map": 0.5, "num_positives": {1: 3}}, ("cat", "dog"))
    assert "cat" in table and "0.5000" in table
