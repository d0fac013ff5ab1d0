"""VOC evaluation: cases worked out by hand, and the whole VOC2007 test ground truth."""

import gzip
import json
import os
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ssd300.detect import Detector
from ssd300.evaluation import (detections_to_pixels, devkit_image_ids, evaluate_detections,
                               format_ap_table, ground_truth_from_annotations,
                               load_ground_truth_json, voc_ap, write_devkit_results)
from ssd300.voc import VOC_CLASSES, Annotation, AnnotationError, XML_preprocessor
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


def test_images_with_the_same_stem_are_not_merged():
    """a.jpg and a.png: the devkit ids (stems) collide, so the table refuses naming both;
    keyed by file name both stay, 2 images and 2 objects."""
    ann = {"a.jpg": Annotation("a.jpg", 100, 100, np.array([[1.0, 1, 50, 50]]), np.array([1]), np.array([False])),
           "a.png": Annotation("a.png", 100, 100, np.array([[51.0, 51, 100, 100]]), np.array([1]),
                               np.array([False]))}
    with pytest.raises(AnnotationError, match=r"images a\.jpg and a\.png have the same image id 'a'"):
        ground_truth_from_annotations(ann)
    with pytest.raises(AnnotationError, match=r"images a\.jpg and a\.png have the same image id"):
        devkit_image_ids(["a.jpg", "b.jpg", "a.png"])
    assert devkit_image_ids(["a.jpg", "sub/a.jpg", "b.png"]) == {"a.jpg": "a", "sub/a.jpg": "sub/a", "b.png": "b"}
    by_file = ground_truth_from_annotations(ann, by_file_name=True)
    assert sorted(by_file) == ["a.jpg", "a.png"]
    detections = {"a.jpg": np.array([[1, 0.9, 1, 1, 50, 50]])}  # finds one of the two
    result = evaluate_detections(detections, by_file, use_07_metric=False)
    assert result["num_positives"] == {1: 2} and result["ap"][1] == pytest.approx(0.5)
    # Detector.evaluate_voc writes devkit ids: it refuses before detecting anything.
    dataset = SimpleNamespace(data={k: None for k in ann}, annotations=ann, classes=("cat",))
    detector = TargetDetector(("cat",), [])
    with pytest.raises(AnnotationError, match=r"images a\.jpg and a\.png have the same image id"):
        detector.evaluate_voc("nowhere", dataset)
    assert detector.batches == []


def test_ground_truth_json_known_answer_and_errors(tmp_path):
    doc = {"000001": {"width": 500, "height": 300, "objects": [["dog", 10, 20, 110, 220, 0],
                                                               ["cat", 1, 1, 5, 5, 1]]},
           "000002": {"width": 40, "height": 30, "objects": []}}
    path = tmp_path / "gt.json.gz"
    with gzip.open(path, "wt", encoding="utf8") as f:
        json.dump(doc, f)
    gt, sizes = load_ground_truth_json(path, ("cat", "dog"))
    np.testing.assert_array_equal(gt["000001"]["boxes"], [[10, 20, 110, 220], [1, 1, 5, 5]])
    np.testing.assert_array_equal(gt["000001"]["labels"], [2, 1])
    np.testing.assert_array_equal(gt["000001"]["difficult"], [False, True])
    assert gt["000002"]["boxes"].shape == (0, 4) and sizes == {"000001": (500, 300), "000002": (40, 30)}

    cases = [("missing.json", None, "ground truth file not found"),
             ("missing.json.gz", None, "ground truth file not found"),
             ("bad.json", "{not json", "not valid JSON"),
             ("bad.json.gz", "plain text, not gzip", "not valid JSON"),
             ("list.json", "[1, 2]", "expected a JSON object"),
             ("no_objects.json", '{"000001": {"width": 5, "height": 5}}', "image 000001: expected"),
             ("short.json", '{"000001": {"width": 5, "height": 5, "objects": [["cat", 1, 1]]}}',
              "image 000001: expected"),
             ("unicorn.json", '{"000003": {"width": 5, "height": 5, "objects": [["unicorn", 1, 1, 2, 2, 0]]}}',
              r"image 000003: unknown class 'unicorn' \(known: cat, dog\)")]
    for name, text, message in cases:
        bad = tmp_path / name
        if text is not None:
            bad.write_text(text)
        with pytest.raises(AnnotationError, match=message) as info:
            load_ground_truth_json(bad, ("cat", "dog"))
        assert str(bad) in str(info.value), name


XML = ("<annotation><filename>{file}</filename><size><width>{w}</width><height>{h}</height>"
       "<depth>3</depth></size><object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin>"
       "<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object></annotation>")

#: (file, stored (width, height), annotated (width, height), VOC box, class, EXIF orientation)
FRAME_CASES = [
    # EXIF 6 (turn 90 degrees) but annotated as stored: training uses the picture as stored.
    ("a.jpg", (200, 100), (200, 100), (21, 11, 120, 60), "cat", 6),
    # Stored at half the annotated size (resized after labelling, the XML not updated).
    ("b.jpg", (250, 150), (500, 300), (101, 51, 300, 200), "dog", None),
    # Control: the sizes agree.
    ("c.jpg", (500, 300), (500, 300), (101, 51, 300, 200), "car", None),
]


def write_frame_pictures(folder):
    """The pictures of FRAME_CASES: left half red and right half blue as stored."""
    os.makedirs(folder, exist_ok=True)
    for name, stored, _, _, _, orientation in FRAME_CASES:
        pixels = np.zeros((stored[1], stored[0], 3), np.uint8)
        pixels[:, :stored[0] // 2, 0] = 255
        pixels[:, stored[0] // 2:, 2] = 255
        options = {}
        if orientation:
            exif = Image.Exif()
            exif[0x0112] = orientation
            options["exif"] = exif.tobytes()
        Image.fromarray(pixels).save(os.path.join(folder, name), quality=95, **options)


class TargetDetector(Detector):
    """A ``Detector`` whose network answers picture ``i`` (in the order detected) with
    ``answers[i]`` = ``(label, normalised box)``, what training taught it; the rest is
    ``Detector``'s own code. ``batches`` records what the network was given."""

    def __init__(self, classes, answers):
        self.classes = tuple(classes)
        self.input_size = (300, 300)
        self.confidence_threshold, self.keep_top_k = 0.01, 200
        self.batches = []
        pending = iter(answers)
        batches = self.batches

        class Network:
            def predict(self, batch, verbose=0):
                batches.append(np.array(batch))
                return np.zeros((len(batch), 1, 1))

        class Decoder:
            def detection_out(self, predictions, keep_top_k, confidence_threshold):
                return [np.array([[label, 0.99, *box]]) for label, box in (next(pending) for _ in predictions)]

        self.model, self.bbox_util = Network(), Decoder()


def stored_left_to_right(batch_image):
    """Red minus blue of the left half minus that of the right half (Caffe BGR input):
    about 2 x 255 x 2 for the picture as stored, 0 when it was turned by 90 degrees."""
    red_minus_blue = batch_image[..., 2] - batch_image[..., 0]
    return red_minus_blue[:, :150].mean() - red_minus_blue[:, 150:].mean()


def test_evaluate_voc_scores_in_the_annotation_frame(tmp_path):
    """A network perfect in the frame it was trained in scores AP 1 for every case.

    Before: the EXIF picture was turned and the detections scaled by the
    picture's own size, giving AP 0 for the first two cases.
    """
    write_frame_pictures(tmp_path / "JPEGImages")
    os.makedirs(tmp_path / "Annotations")
    for name, _, (w, h), box, cls, _ in FRAME_CASES:
        (tmp_path / "Annotations" / name.replace(".jpg", ".xml")).write_text(
            XML.format(file=name, w=w, h=h, b=box, name=cls))
    prep = XML_preprocessor(tmp_path / "Annotations")
    keys = sorted(prep.data)
    detector = TargetDetector(prep.classes, [(prep.annotations[k].labels[0], prep.data[k][0, :4]) for k in keys])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        detections, result = detector.evaluate_voc(tmp_path, prep, batch_size=1)
    for name, _, _, box, cls, _ in FRAME_CASES:
        np.testing.assert_allclose(detections[name[:-4]][0, 2:], box, rtol=1e-12)
        assert result["ap"][VOC_CLASSES.index(cls) + 1] == 1.0, name
    assert result["map"] == 1.0
    assert any("1 images have EXIF orientation but their annotations match the stored size" in str(w.message)
               for w in record)
    # The network saw a.jpg as stored (left red, right blue), the others too.
    assert [stored_left_to_right(b[0]) > 300 for b in detector.batches] == [True, True, True]
    # detect_files without sizes: the picture upright (turned), boxes in its own frame.
    detector = TargetDetector(prep.classes, [(8, np.array([0.1, 0.2, 0.5, 0.6]))])
    found, sizes = detector.detect_files([tmp_path / "JPEGImages" / "a.jpg"])
    assert sizes == [(100, 200)]
    np.testing.assert_allclose(found[0][0, 2:], [10, 40, 50, 120])
    assert abs(stored_left_to_right(detector.batches[0][0])) < 20


def test_devkit_results_that_cannot_be_written_name_the_folder(tmp_path):
    from ssd300.errors import UserError

    (tmp_path / "afile").write_text("x")
    detections = {"000001": np.array([[1, 0.9, 10, 20, 30, 40]])}
    with pytest.raises(UserError, match=rf"^{tmp_path / 'afile'}: cannot write the devkit result files \("):
        write_devkit_results(detections, ["dog"], tmp_path / "afile")
    assert write_devkit_results(detections, ["dog"], tmp_path / "out") == [str(tmp_path / "out" / "comp4_det_test_dog.txt")]
    assert (tmp_path / "out" / "comp4_det_test_dog.txt").read_text() == "000001 0.900000 10.0 20.0 30.0 40.0\n"


def test_evaluate_detections_refuses_malformed_arrays_naming_the_image():
    gt = {"a": {"boxes": [[1, 1, 50, 50]], "labels": [1], "difficult": [False]},
          "b": {"boxes": np.zeros((0, 4)), "labels": [], "difficult": []}}
    hit = np.array([[1, 0.9, 1, 1, 50, 50]])
    assert evaluate_detections({"a": hit[0], "b": []}, gt)["map"] == 1.0  # one flat row, no rows
    refused = [({"a": np.ones((3, 4))}, gt, 0.5, r"detections of image 'a': expected shape \(N, 6\), got \(3, 4\)"),
               ({"a": np.ones((2, 7))}, gt, 0.5, r"got \(2, 7\)"),  # 14 values were read as 2 rows of 6 before
               ({"a": [[1, np.nan, 1, 1, 50, 50]]}, gt, 0.5, r"detections of image 'a': NaN or infinite values"),
               ({"a": hit}, {**gt, "b": {"boxes": [[1, 2, 3, 4, 5]], "labels": [1]}}, 0.5,
                r"ground truth boxes of image 'b': expected shape \(N, 4\), got \(1, 5\)"),
               ({"a": hit}, {**gt, "b": {"boxes": [[1, 2, 3, 4]], "labels": [1, 2]}}, 0.5,
                r"ground truth of image 'b': 1 boxes, 2 labels and 1 difficult flags"),
               ({"a": hit}, {**gt, "b": {"boxes": [[1, 2, 3, 4]]}}, 0.5,
                r"ground truth of image 'b': expected a dict with 'boxes', 'labels'"),
               ({"a": hit}, [gt], 0.5, r"ground_truth must map image ids to arrays, got list"),
               ({"a": hit}, gt, 1.5, r"iou_threshold must be in \[0, 1\], got 1.5"),
               ({"a": hit}, gt, float("nan"), r"iou_threshold must be in \[0, 1\], got nan")]
    for detections, truth, threshold, message in refused:
        with pytest.raises(ValueError, match=message):
            evaluate_detections(detections, truth, iou_threshold=threshold)
