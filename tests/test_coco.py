"""COCO JSON datasets: known answers, every bad record, a large file, Roboflow's real export."""

import json
import os
import re
import time
import warnings

import numpy as np
import pytest

from ssd300.coco import (BOX_TOLERANCE, CocoDataset, coco_splits, find_coco_split, is_coco_root, load_coco)
from ssd300.datasets import coco_source
from ssd300.errors import UserError
from ssd300.voc import VOC_CLASSES, AnnotationError
from tests.conftest import shared_path

ROBOFLOW = ("voc2007_roboflow_coco", "valid")


def coco_doc(annotations=None, images=None, categories=None):
    """A small valid COCO dict: two images, a placeholder category 0 and two classes."""
    return {
        "images": images if images is not None else [
            {"id": 1, "file_name": "a.jpg", "width": 200, "height": 100},
            {"id": 7, "file_name": "sub/b.jpg", "width": 50, "height": 40},
            {"id": 3, "file_name": "empty.jpg", "width": 30, "height": 30},
        ],
        "categories": categories if categories is not None else [
            {"id": 0, "name": "things", "supercategory": "none"},
            {"id": 5, "name": "dog", "supercategory": "things"},
            {"id": 2, "name": "cat", "supercategory": "things"},
        ],
        "annotations": annotations if annotations is not None else [
            {"id": 10, "image_id": 1, "category_id": 5, "bbox": [9, 19, 100, 50], "area": 5000, "iscrowd": 0},
            {"id": 11, "image_id": 7, "category_id": 2, "bbox": [0.5, 1.5, 20.25, 10], "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 2, "bbox": [0, 0, 200, 100], "area": 1234.5,
             "iscrowd": 1},
            {"id": 13, "image_id": 1, "category_id": 2, "bbox": [50, 10, 20, 30], "difficult": 1},
        ],
    }


def write_json(tmp_path, doc, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def make_images(folder, names):
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"jpeg")


def test_known_answer(tmp_path):
    path = write_json(tmp_path, coco_doc())
    make_images(tmp_path / "img", ["a.jpg", "sub/b.jpg", "empty.jpg"])
    ds = load_coco(path, tmp_path / "img")
    assert isinstance(ds, CocoDataset)
    # Classes: categories with boxes in id order (cat = 2, dog = 5); placeholder 0 dropped.
    assert ds.classes == ("cat", "dog") and ds.category_ids == (2, 5) and ds.num_classes == 2
    assert sorted(ds.data) == ["a.jpg", "sub/b.jpg"]  # the image without boxes is left out
    assert ds.image_ids == {"a.jpg": 1, "sub/b.jpg": 7}
    # a.jpg: dog [9, 19, 100, 50] -> VOC (10, 20, 109, 69); the crowd box is not a target;
    # the difficult cat [50, 10, 20, 30] -> (51, 11, 70, 40) stays, flagged.
    np.testing.assert_array_equal(ds.data["a.jpg"], [[10 / 200, 20 / 100, 109 / 200, 69 / 100, 0, 1],
                                                     [51 / 200, 11 / 100, 70 / 200, 40 / 100, 1, 0]])
    np.testing.assert_array_equal(ds.difficult["a.jpg"], [False, True])
    ann = ds.annotations["a.jpg"]
    assert (ann.filename, ann.width, ann.height) == ("a.jpg", 200, 100)
    np.testing.assert_array_equal(ann.boxes, [[10, 20, 109, 69], [1, 1, 200, 100], [51, 11, 70, 40]])
    np.testing.assert_array_equal(ann.labels, [2, 1, 1])
    np.testing.assert_array_equal(ann.difficult, [False, True, True])  # crowd and difficult ignored
    np.testing.assert_array_equal(ds.iscrowd["a.jpg"], [False, True, False])
    np.testing.assert_array_equal(ds.areas["a.jpg"], [5000, 1234.5, 600])  # file's area, else w*h
    np.testing.assert_allclose(ds.data["sub/b.jpg"], [[1.5 / 50, 2.5 / 40, 20.75 / 50, 11.5 / 40, 1, 0]])
    assert ds.path_prefix == str(tmp_path / "img") + "/"

    no_diff = load_coco(path, tmp_path / "img", skip_difficult=True)
    assert no_diff.data["a.jpg"].shape == (1, 6) and len(no_diff.annotations["a.jpg"].labels) == 3


def test_class_list_and_keep_empty(tmp_path):
    path = write_json(tmp_path, coco_doc())
    ds = load_coco(path, classes=("horse", "dog", "cat"), keep_empty=True)
    assert ds.classes == ("horse", "dog", "cat") and ds.category_ids == (None, 5, 2)
    assert ds.data["empty.jpg"].shape == (0, 7) and ds.annotations["empty.jpg"].boxes.shape == (0, 4)
    np.testing.assert_array_equal(ds.annotations["a.jpg"].labels, [2, 3, 3])
    np.testing.assert_array_equal(ds.data["a.jpg"][:, 4:], [[0, 1, 0], [0, 0, 1]])
    # A category outside the list: an error naming it, or skipped with a warning.
    with pytest.raises(AnnotationError,
                       match=r"ann.json: annotation id 10: category 'dog' \(id 5\) is not in"):
        load_coco(path, classes=("cat",))
    with pytest.warns(UserWarning, match="annotation id 10"):
        ds = load_coco(path, classes=("cat",), on_error="warn")
    assert ds.classes == ("cat",) and ds.data["a.jpg"].shape == (1, 5)
    with pytest.raises(UserError, match="repeated"):
        load_coco(path, classes=("cat", "cat"))


def test_image_without_training_boxes(tmp_path):
    doc = coco_doc(annotations=[
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 10, 10], "iscrowd": 1},
        {"id": 2, "image_id": 7, "category_id": 2, "bbox": [0, 0, 10, 10]}])
    ds = load_coco(write_json(tmp_path, doc))
    assert list(ds.data) == ["sub/b.jpg"]  # only a crowd box: not a training image
    assert ds.classes == ("cat", "dog")  # a category with only crowd boxes is a class
    ds = load_coco(write_json(tmp_path, doc), keep_empty=True)
    assert ds.data["a.jpg"].shape == (0, 6) and ds.iscrowd["a.jpg"].tolist() == [True]


def test_tolerance_clips_small_excess(tmp_path):
    t = BOX_TOLERANCE
    doc = coco_doc(annotations=[
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [-0.4 * t, -t, 200 + 0.4 * t, 50]},
        {"id": 2, "image_id": 1, "category_id": 5, "bbox": [190, 90, 10 + t, 10 + 0.5 * t]}])
    ds = load_coco(write_json(tmp_path, doc))
    np.testing.assert_array_equal(ds.annotations["a.jpg"].boxes, [[1, 1, 200, 50 - t], [191, 91, 200, 100]])
    assert ds.data["a.jpg"][:, :4].max() == 1.0


def test_evaluation_keeps_every_box_as_written(tmp_path):
    """evaluation=True: boxes training refuses stay in ``annotations`` unclipped (as
    pycocotools scores the file), out of ``data``; every image is kept."""
    t = BOX_TOLERANCE
    extra = [
        {"id": 20, "image_id": 1, "category_id": 5, "bbox": [30, 40, 0, 10], "area": 0},      # zero width
        {"id": 21, "image_id": 1, "category_id": 5, "bbox": [30, 40, 0.5, 10]},              # under a pixel
        {"id": 22, "image_id": 1, "category_id": 2, "bbox": [150, 50, 100, 80], "area": 99},  # past the edge
        {"id": 23, "image_id": 1, "category_id": 2, "bbox": [-0.5 * t, 0, 20, 10]},          # clipped in training
        {"id": 24, "image_id": 7, "category_id": 2, "bbox": [5, 5, -3, 4], "iscrowd": 1},    # negative, crowd
    ]
    path = write_json(tmp_path, coco_doc(annotations=coco_doc()["annotations"] + extra))
    with pytest.raises(AnnotationError, match="annotation id 20: bbox .* needs a positive width"):
        load_coco(path)
    with pytest.warns(UserWarning, match=r"ann.json: 4 boxes of no size, under one pixel or outside"):
        ds = load_coco(path, evaluation=True)
    assert ds.evaluation and sorted(ds.annotations) == ["a.jpg", "empty.jpg", "sub/b.jpg"]
    assert ds.classes == ("cat", "dog")
    ann = ds.annotations["a.jpg"]
    np.testing.assert_array_equal(ann.boxes, [[10, 20, 109, 69], [1, 1, 200, 100], [51, 11, 70, 40],
                                              [31, 41, 30, 50], [31, 41, 30.5, 50], [151, 51, 250, 130],
                                              [1 - 0.5 * t, 1, 19.5, 10]])
    np.testing.assert_array_equal(ann.labels, [2, 1, 1, 2, 2, 1, 1])
    np.testing.assert_array_equal(ann.difficult, [False, True, True, False, False, False, False])
    # The file's area where it gives one (also 0), else width x height of the box as written.
    np.testing.assert_array_equal(ds.areas["a.jpg"], [5000, 1234.5, 600, 0, 5, 99, 200])
    # Training rows: the boxes training takes, clipped as training clips them.
    np.testing.assert_allclose(ds.data["a.jpg"][:, :4] * [200, 100, 200, 100],
                               [[10, 20, 109, 69], [51, 11, 70, 40], [1, 1, 19.5, 10]], rtol=1e-12)
    np.testing.assert_array_equal(ds.iscrowd["sub/b.jpg"], [False, True])
    np.testing.assert_array_equal(ds.annotations["sub/b.jpg"].boxes[1], [6, 6, 2, 9])
    assert ds.data["sub/b.jpg"].shape == (1, 6) and ds.data["empty.jpg"].shape == (0, 6)
    # Records pycocotools cannot score either still raise (or are skipped with on_error="warn").
    bad = coco_doc(annotations=coco_doc()["annotations"] + extra[:1]
                   + [{"id": 30, "image_id": 1, "category_id": 42, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(AnnotationError, match="annotation id 30: category_id 42 is not in 'categories'"):
        load_coco(write_json(tmp_path, bad), evaluation=True)


def test_one_pixel_box_as_the_voc_reader_reads_it(tmp_path):
    """COCO width 1 is VOC's one-pixel box xmin == xmax, which parse_annotation accepts
    too; a width under one pixel would be xmax < xmin, refused by both readers."""
    from ssd300.voc import parse_annotation

    doc = coco_doc(annotations=[{"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 1, 30]}])
    ds = load_coco(write_json(tmp_path, doc))
    np.testing.assert_array_equal(ds.annotations["a.jpg"].boxes, [[11, 11, 11, 40]])
    xml = ("<annotation><filename>a.jpg</filename><size><width>200</width><height>100</height></size>"
           "<object><name>dog</name><bndbox><xmin>{}</xmin><ymin>11</ymin><xmax>11</xmax><ymax>40</ymax>"
           "</bndbox></object></annotation>")
    (tmp_path / "a.xml").write_text(xml.format(11))
    np.testing.assert_array_equal(parse_annotation(tmp_path / "a.xml", ("cat", "dog")).boxes,
                                  ds.annotations["a.jpg"].boxes)
    doc["annotations"][0]["bbox"] = [10, 10, 0.5, 30]
    with pytest.raises(AnnotationError, match="under one pixel wide or high"):
        load_coco(write_json(tmp_path, doc))
    (tmp_path / "a.xml").write_text(xml.format(11.5))  # xmax = x + width = 10.5 < xmin = 11
    with pytest.raises(AnnotationError, match="empty box"):
        parse_annotation(tmp_path / "a.xml", ("cat", "dog"))


def set_ann(key, value):
    return lambda d: d["annotations"][1].__setitem__(key, value)


def set_img(key, value):
    return lambda d: d["images"][1].__setitem__(key, value)


def pop(part, key):
    return lambda d: d[part][1].pop(key)


NAN, INF = float("nan"), float("inf")
BAD_RECORDS = [
    # (what to change in annotation id 11 or image id 7, the message expected)
    (set_ann("image_id", 99), "annotation id 11: image_id 99 is not in 'images'"),
    (set_ann("category_id", 42), "annotation id 11: category_id 42 is not in 'categories'"),
    (set_ann("bbox", [1, 2, NAN, 4]), "annotation id 11: bbox has a value that is not finite"),
    (set_ann("bbox", [1, 2, INF, 4]), "annotation id 11: bbox has a value that is not finite"),
    (set_ann("bbox", ["1", 2, 3, 4]), "annotation id 11: bbox must be 4 numbers"),
    (set_ann("bbox", [1, 2, 3]), "annotation id 11: bbox must be 4 numbers"),
    (set_ann("bbox", None), "annotation id 11: bbox must be 4 numbers"),
    (pop("annotations", "bbox"), "annotation id 11: bbox must be 4 numbers"),
    (pop("annotations", "image_id"), "annotation id 11: needs an integer 'image_id', got None"),
    (set_ann("category_id", "2"), "annotation id 11: needs an integer 'category_id'"),
    (set_ann("bbox", [1, 2, 0, 4]), r"annotation id 11: bbox \[1, 2, 0, 4\] needs a positive width"),
    (set_ann("bbox", [1, 2, 3, -4]), "needs a positive width and height"),
    (set_ann("bbox", [40, 2, 12, 4]),
     r"annotation id 11: bbox \[40, 2, 12, 4\] lies outside the 50x40 image sub/b.jpg"),
    (set_ann("bbox", [-3, 2, 12, 4]), "lies outside"),
    (set_ann("iscrowd", 2), "annotation id 11: 'iscrowd' must be 0 or 1, got 2"),
    (set_ann("difficult", "yes"), "'difficult' must be 0 or 1"),
    (lambda d: d["annotations"].__setitem__(1, [1, 2]), "annotation #1: expected an object"),
    (pop("images", "width"), "image id 7: missing 'width'"),
    (set_img("height", 0), r"image id 7: \(sub/b.jpg\) width and height must be positive"),
    (set_img("id", "7"), "image #1: needs an integer 'id'"),
    (set_img("id", 1), r"image id 1: \(sub/b.jpg\) the id is used twice"),
    (set_img("file_name", "a.jpg"), r"image id 7: file_name 'a.jpg' is listed twice \(also image id 1\)"),
    (set_img("file_name", "../b.jpg"), "image id 7: file_name '../b.jpg' points outside the image folder"),
    (set_img("file_name", "sub/../../b.jpg"), "points outside"),
    (set_img("file_name", "/etc/b.jpg"), "image id 7: file_name '/etc/b.jpg' is an absolute path"),
    (set_img("file_name", "C:\\data\\b.jpg"), "is an absolute path"),
    (set_img("file_name", 5), "image id 7: file_name must be a string"),
]


@pytest.mark.parametrize("change, message", BAD_RECORDS)
def test_bad_records_raise_or_are_skipped(tmp_path, change, message):
    doc = coco_doc()
    change(doc)
    path = write_json(tmp_path, doc)
    with pytest.raises(AnnotationError, match=message) as info:
        load_coco(path)
    assert str(path) in str(info.value)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = load_coco(path, on_error="warn")
    assert re.search(message, str(record[0].message)) and str(path) in str(record[0].message)
    # A skipped image takes its annotation along, saying so.
    assert all("annotation id 11: " in str(w.message) for w in record[1:])
    # Every bad case touches image 7 or its annotation 11 only: a.jpg is intact.
    np.testing.assert_array_equal(ds.annotations["a.jpg"].boxes, [[10, 20, 109, 69], [1, 1, 200, 100],
                                                                  [51, 11, 70, 40]])
    assert "sub/b.jpg" not in ds.data or len(ds.data["sub/b.jpg"]) == 0


def test_missing_image_on_disk(tmp_path):
    path = write_json(tmp_path, coco_doc())
    make_images(tmp_path / "img", ["a.jpg", "empty.jpg"])
    with pytest.raises(AnnotationError, match=r"image id 7: image .*sub/b.jpg not found"):
        load_coco(path, tmp_path / "img")
    with pytest.warns(UserWarning) as record:
        ds = load_coco(path, tmp_path / "img", on_error="warn")
    messages = [str(w.message) for w in record]
    assert any("image id 7" in m for m in messages)
    assert any("annotation id 11: its image id 7 was skipped" in m for m in messages)
    assert sorted(ds.data) == ["a.jpg"]
    load_coco(path)  # without an image folder nothing is checked on disk
    with pytest.raises(AnnotationError, match="image folder not found"):
        load_coco(path, tmp_path / "nowhere")


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"images": [], "annotations": []}', "no 'categories' list"),
    ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list"),
    ('{"images": [], "annotations": [], "categories": [{"id": 1}]}',
     "category #0 needs an integer 'id' and a string 'name'"),
    ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}',
     "category id 1 is listed twice"),
])
def test_bad_files_always_raise(tmp_path, text, message):
    path = write_json(tmp_path, text)
    for on_error in ("raise", "warn"):
        with pytest.raises(AnnotationError, match=message):
            load_coco(path, on_error=on_error)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(AnnotationError, match="annotation file not found"):
        load_coco(tmp_path / "none.json")
    (tmp_path / "_annotations.coco.json").write_text("{}")
    with pytest.raises(AnnotationError, match="is a folder.*holds _annotations.coco.json"):
        load_coco(tmp_path)
    with pytest.raises(ValueError, match="on_error"):
        load_coco(tmp_path / "_annotations.coco.json", on_error="ignore")


def test_same_category_name_twice(tmp_path):
    doc = coco_doc(categories=[{"id": 5, "name": "dog"}, {"id": 2, "name": "dog"}])
    with pytest.raises(AnnotationError, match="same name 'dog'"):
        load_coco(write_json(tmp_path, doc))
    with pytest.raises(AnnotationError, match="same name 'dog'"):
        load_coco(write_json(tmp_path, doc), classes=("dog",))


def test_many_warnings_are_summarised(tmp_path):
    bad = [{"id": i, "image_id": 1, "category_id": 5, "bbox": [0, 0, -1, 1]} for i in range(100, 130)]
    doc = coco_doc(annotations=coco_doc()["annotations"] + bad)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = load_coco(write_json(tmp_path, doc), on_error="warn")
    assert len(record) == 21 and "10 more bad records skipped (30 in all)" in str(record[-1].message)
    assert len(ds.annotations["a.jpg"].labels) == 3


def synthetic_coco(num_images, num_annotations, num_categories, seed=0):
    """A random COCO dict and the expected (per-image box count, per-class count)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, num_images, num_annotations)
    size = np.array([640, 480])
    wh = rng.uniform(2, 200, (num_annotations, 2)).round(2)
    xy = (rng.uniform(0, 1, (num_annotations, 2)) * (size - wh)).round(2)
    cat = rng.integers(1, num_categories + 1, num_annotations)
    crowd = rng.random(num_annotations) < 0.01
    doc = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480}
                   for i in range(num_images)],
        "categories": [{"id": c, "name": f"class{c}"} for c in range(num_categories + 1)],
        "annotations": [{"id": i + 1, "image_id": im, "category_id": c, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": int(cr), "segmentation": []}
                        for i, (im, c, x, y, w, h, cr) in enumerate(zip(
                            image.tolist(), cat.tolist(), *xy.T.tolist(), *wh.T.tolist(), crowd.tolist()))],
    }
    return doc, image, cat, crowd, np.concatenate([xy, xy + wh], axis=1)


@pytest.mark.slow  # about 4 s, most of it writing the file
def test_large_file(tmp_path):
    """100k annotations (16 MB): correct counts and boxes; prints the load time."""
    doc, image, cat, crowd, boxes = synthetic_coco(20_000, 100_000, 80)
    path = write_json(tmp_path, doc)
    del doc
    start = time.perf_counter()
    ds = load_coco(path)
    print(f"\nload_coco: 100k annotations ({path.stat().st_size / 1e6:.0f} MB) in "
          f"{time.perf_counter() - start:.2f} s")
    assert len(ds.classes) == 80 and ds.category_ids == tuple(range(1, 81))
    has_box = np.bincount(image[~crowd], minlength=20_000) > 0
    assert len(ds.data) == has_box.sum()
    assert sum(len(v) for v in ds.data.values()) == (~crowd).sum()
    kept_images = np.flatnonzero(has_box)
    assert sum(len(a.labels) for a in ds.annotations.values()) == np.isin(image, kept_images).sum()
    counts = np.bincount(np.concatenate([v[:, 4:].argmax(1) for v in ds.data.values()]), minlength=80)
    np.testing.assert_array_equal(counts, np.bincount(cat[~crowd] - 1, minlength=80))
    # One image's boxes in file order, against the generated ones (VOC: x + 1, x + w).
    k = int(image[0])
    mine = (image == k) & ~crowd
    np.testing.assert_allclose(ds.data[f"{k:012d}.jpg"][:, :4],
                               (boxes[mine] + [1, 1, 0, 0]) / [640, 480, 640, 480], rtol=1e-12)


def test_find_coco_split(tmp_path):
    root = tmp_path / "export"
    for split in ("train", "valid"):
        (root / split).mkdir(parents=True)
        (root / split / "_annotations.coco.json").write_text("{}")
    (root / "README.roboflow.txt").write_text("")
    assert is_coco_root(root) and not is_coco_root(root / "train") and not is_coco_root(tmp_path / "x")
    assert find_coco_split(root, "train") == (str(root / "train" / "_annotations.coco.json"),
                                              str(root / "train"))
    assert find_coco_split(root, "val") == find_coco_split(root, "valid")
    with pytest.raises(UserError, match=r"no COCO split 'test'.*Splits found: train, valid.*"
                                        r"README.roboflow.txt, train, valid"):
        find_coco_split(root, "test")
    with pytest.raises(UserError, match="dataset folder not found"):
        find_coco_split(tmp_path / "nowhere", "train")
    # COCO's own layout: annotations/instances_val2017.json and val2017/.
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "val2017").mkdir()
    (coco / "annotations" / "instances_val2017.json").write_text("{}")
    assert is_coco_root(coco)
    assert find_coco_split(coco, "val") == (str(coco / "annotations" / "instances_val2017.json"),
                                            str(coco / "val2017"))


def test_unreadable_dataset_folder_is_named(tmp_path, monkeypatch):
    """As for a folder of another user (``chmod 700``): no PermissionError traceback."""
    root = tmp_path / "private"
    root.mkdir()

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("os.listdir", refuse)
    for call in (coco_splits, is_coco_root, lambda p: find_coco_split(p, "train")):
        with pytest.raises(UserError, match=rf"^{re.escape(str(root))}: cannot read \(Permission denied\)$"):
            call(root)
    # The folder readable, its annotations/ (COCO's layout) not.
    (root / "annotations").mkdir()
    monkeypatch.setattr("os.listdir", lambda p: refuse(p) if os.fspath(p).endswith("annotations") else [])
    for call in (is_coco_root, lambda p: find_coco_split(p, "train")):
        with pytest.raises(UserError, match=rf"^{re.escape(str(root / 'annotations'))}: cannot read "):
            call(root)


def test_category_names_are_stripped_as_class_files_read_them(tmp_path):
    """classes.txt written from the names must read back the same (its readers strip lines)."""
    doc = coco_doc()
    doc["categories"][1]["name"] = " dog"
    doc["categories"][2]["name"] = "cat \t"
    path = write_json(tmp_path, doc)
    ds = load_coco(path)
    assert ds.classes == ("cat", "dog") and ds.category_ids == (2, 5)
    assert load_coco(path, classes=["dog", "cat"]).category_ids == (5, 2)
    doc["categories"][2]["name"] = "dog "  # the same name once stripped
    with pytest.raises(AnnotationError, match=r"categories 2 and 5 have the same name 'dog'"):
        load_coco(write_json(tmp_path, doc))


@pytest.mark.parametrize("name", ["", "  ", "\n"])
def test_empty_category_name_is_refused(tmp_path, name):
    doc = coco_doc()
    doc["categories"][2]["name"] = name
    path = write_json(tmp_path, doc)
    with pytest.raises(AnnotationError, match=rf"^{re.escape(str(path))}: category id 2 has an empty name"):
        load_coco(path)


def test_coco_source(tmp_path, monkeypatch):
    root = tmp_path / "export"
    for split in ("train", "valid"):
        (root / split).mkdir(parents=True)
        (root / split / "_annotations.coco.json").write_text("{}")
    ann = root / "valid" / "_annotations.coco.json"
    # A split folder of a Roboflow export given directly.
    assert coco_source(root / "valid") == (str(ann), str(root / "valid"))
    assert coco_source(root, split="valid") == (str(ann), str(root / "valid"))
    assert coco_source(root, split="trainval") == coco_source(root / "train")
    # A file: its folder holds the images unless told otherwise (load_coco then checks them).
    assert coco_source(ann) == (str(ann), str(root / "valid"))
    assert coco_source(ann, tmp_path / "img") == (str(ann), str(tmp_path / "img"))
    monkeypatch.chdir(root / "valid")
    assert coco_source("_annotations.coco.json") == ("_annotations.coco.json", ".")
    monkeypatch.undo()
    # An image folder with a dataset folder would be ignored: refused.
    for folder in (root, root / "valid"):
        with pytest.raises(UserError, match=rf"{re.escape(str(folder))} is a dataset folder.*--images "
                                            rf"{re.escape(str(tmp_path / 'img'))} is only for a COCO JSON"):
            coco_source(folder, tmp_path / "img")


def test_roboflow_export():
    folder = shared_path(*ROBOFLOW)
    ann_file, image_dir = find_coco_split(folder.parent, "val")
    assert is_coco_root(folder.parent)
    ds = load_coco(ann_file, image_dir)
    # 3072 boxes of the 20 VOC classes; category 0 ("objects") is a placeholder.
    assert ds.classes == VOC_CLASSES and ds.category_ids == tuple(range(1, 21))
    assert sum(len(v) for v in ds.data.values()) == 3072
    assert len(ds.data) == 992  # of the 1004 images, 12 have no box
    assert len(load_coco(ann_file, image_dir, keep_empty=True).data) == 1004
    assert not any(d.any() for d in ds.difficult.values())  # Roboflow drops VOC's difficult flags
    # Two VOC ids exported twice, as two files with their own boxes.
    assert sorted(k[:6] for k in ds.data if k.startswith(("004960", "004983"))) == \
        ["004960", "004960", "004983", "004983"]
    # VOC2007 000032.xml (500x281): aeroplane (104, 78, 375, 183), aeroplane (133, 88, 197, 123),
    # person (195, 180, 213, 229), person (26, 189, 44, 238). Roboflow wrote x = xmin - 1,
    # w = xmax - xmin, so xmin/ymin come back exactly and xmax/ymax one pixel smaller.
    key = next(k for k in ds.annotations if k.startswith("000032_jpg"))
    ann = ds.annotations[key]
    voc = np.array([[104, 78, 375, 183], [133, 88, 197, 123], [195, 180, 213, 229], [26, 189, 44, 238]])
    assert (ann.width, ann.height) == (500, 281)
    np.testing.assert_array_equal(ann.boxes, voc - [0, 0, 1, 1])
    assert [ds.classes[i - 1] for i in ann.labels] == ["aeroplane", "aeroplane", "person", "person"]
    # The VOC label order from an explicit class list (here the same as the category ids).
    reordered = load_coco(ann_file, classes=tuple(reversed(VOC_CLASSES)))
    assert [reordered.classes[i - 1] for i in reordered.annotations[key].labels] == \
        ["aeroplane", "aeroplane", "person", "person"]
    np.testing.assert_array_equal(reordered.annotations[key].labels, 21 - ann.labels)
    assert load_coco(ann_file, classes=VOC_CLASSES).classes == VOC_CLASSES


@pytest.mark.slow  # importing the generator imports Keras
def test_works_with_the_training_pipeline(priors):
    """A CocoDataset feeds SamplePipeline (Generator / SSDDataset) like XML_preprocessor."""
    from ssd300.generator import SamplePipeline
    from ssd300.ssd_utils import BBoxUtility

    folder = shared_path(*ROBOFLOW)
    ds = load_coco(folder / "_annotations.coco.json", folder)
    bbox_util = BBoxUtility(len(ds.classes) + 1, priors)
    pipeline = SamplePipeline(ds.data, bbox_util, ds.image_dir, (300, 300), augment=None)
    key = next(k for k in ds.data if k.startswith("000032_jpg"))
    image, target = pipeline.load(key, np.random.default_rng(0), train=False)
    assert image.shape == (300, 300, 3) and target.shape == (len(priors), 4 + 21 + 8)
    matched = target[:, -8] > 0
    assert matched.any()
    # Every matched prior is labelled aeroplane (1) or person (15), the image's classes.
    assert set(np.unique(target[matched, 4:25].argmax(1))) <= {1, 15}
