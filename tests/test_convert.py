"""VOC XML <-> COCO JSON conversion: exact round trips both ways, real and synthetic data."""

import errno
import json
import os
import re

import numpy as np
import pytest

from ssd300.coco import load_coco
from ssd300.convert import annotation_xml, coco_root_to_voc, coco_to_voc, voc_to_coco
from ssd300.errors import UserError
from ssd300.synth import make_synthetic_voc
from ssd300.voc import Annotation, XML_preprocessor, parse_annotation, read_split
from tests.conftest import shared_path


def assert_same_annotations(a, b, keys=None):
    """Two ``{key: Annotation}`` dicts hold the same images, sizes, boxes, labels and flags."""
    keys = sorted(a) if keys is None else keys
    assert sorted(a) == sorted(b) == sorted(keys)
    for k in keys:
        assert (a[k].filename, a[k].width, a[k].height) == (b[k].filename, b[k].width, b[k].height)
        np.testing.assert_array_equal(a[k].boxes, b[k].boxes)
        np.testing.assert_array_equal(a[k].labels, b[k].labels)
        np.testing.assert_array_equal(a[k].difficult, b[k].difficult)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic_voc(tmp_path_factory.mktemp("synth") / "voc", images=20, seed=0)


def test_voc_to_coco_known_answer(synthetic, tmp_path):
    out = tmp_path / "coco.json"
    counts = voc_to_coco(synthetic, out)
    prep = XML_preprocessor(os.path.join(synthetic, "Annotations"))
    assert counts == {"images": 20, "annotations": sum(len(a.labels) for a in prep.annotations.values()),
                      "classes": 4}
    doc = json.loads(out.read_text())
    assert [c["name"] for c in doc["categories"]] == ["circle", "square", "triangle", "cross"]
    assert [c["id"] for c in doc["categories"]] == [1, 2, 3, 4]
    first = prep.annotations["000001.jpg"]
    image = next(i for i in doc["images"] if i["file_name"] == "000001.jpg")
    assert (image["width"], image["height"]) == (first.width, first.height)
    anns = [a for a in doc["annotations"] if a["image_id"] == image["id"]]
    xmin, ymin, xmax, ymax = first.boxes[0]
    # x = xmin - 1, w = xmax - xmin + 1 (integers stay integers in the JSON).
    assert anns[0]["bbox"] == [int(xmin) - 1, int(ymin) - 1, int(xmax - xmin) + 1, int(ymax - ymin) + 1]
    assert anns[0]["area"] == anns[0]["bbox"][2] * anns[0]["bbox"][3]
    assert anns[0]["category_id"] == first.labels[0] and anns[0]["iscrowd"] == 0 and anns[0]["difficult"] == 0
    # Only one split, from the Annotations folder or from the root.
    test_ids = read_split(synthetic, "test")
    assert voc_to_coco(synthetic, tmp_path / "test.json", split="test")["images"] == len(test_ids)
    assert voc_to_coco(os.path.join(synthetic, "Annotations"), tmp_path / "all.json")["images"] == 20


def test_synthetic_round_trips(synthetic, tmp_path):
    # VOC -> COCO -> VOC: the same XML content.
    voc_to_coco(synthetic, tmp_path / "coco.json")
    counts = coco_to_voc(tmp_path / "coco.json", os.path.join(synthetic, "JPEGImages"), tmp_path / "back",
                         split="trainval")
    assert counts == {"images": 20, "objects": 49, "classes": 4}
    original = XML_preprocessor(os.path.join(synthetic, "Annotations"))
    back = XML_preprocessor(tmp_path / "back" / "Annotations")  # reads back/classes.txt
    assert back.classes == original.classes
    assert_same_annotations(original.annotations, back.annotations)
    for k in original.data:
        np.testing.assert_array_equal(original.data[k], back.data[k])
    assert read_split(tmp_path / "back", "trainval") == [f"{i:06d}" for i in range(1, 21)]
    # The images are there (hard links of the originals, or copies).
    for k in original.data:
        assert (tmp_path / "back" / "JPEGImages" / k).read_bytes() == \
            open(os.path.join(synthetic, "JPEGImages", k), "rb").read()
    # COCO -> VOC -> COCO: the same JSON boxes, categories and flags.
    voc_to_coco(tmp_path / "back", tmp_path / "again.json")
    first, second = (json.loads((tmp_path / n).read_text()) for n in ("coco.json", "again.json"))
    for key in ("images", "annotations", "categories"):
        assert first[key] == second[key]
    # load_coco of the converted file gives XML_preprocessor's ground truth exactly.
    ds = load_coco(tmp_path / "coco.json", os.path.join(synthetic, "JPEGImages"))
    assert ds.classes == original.classes
    assert_same_annotations(original.annotations, ds.annotations)
    for k in original.data:
        np.testing.assert_array_equal(original.data[k], ds.data[k])


def test_real_voc_with_difficult_objects(tmp_path):
    root = shared_path("voc2007_sample", "VOC2007")
    counts = voc_to_coco(root, tmp_path / "voc2007.json", split="test")
    assert counts == {"images": 13, "annotations": 59, "classes": 20}
    doc = json.loads((tmp_path / "voc2007.json").read_text())
    assert sum(a["difficult"] for a in doc["annotations"]) == 9
    # 000001.xml: dog (48, 240, 195, 371), person (8, 12, 352, 498).
    image = next(i["id"] for i in doc["images"] if i["file_name"] == "000001.jpg")
    assert [a["bbox"] for a in doc["annotations"] if a["image_id"] == image] == \
        [[47, 239, 148, 132], [7, 11, 345, 487]]
    prep = XML_preprocessor(root / "Annotations")
    ds = load_coco(tmp_path / "voc2007.json", root / "JPEGImages", classes=prep.classes)
    assert_same_annotations(prep.annotations, ds.annotations)  # difficult flags included
    for k in prep.data:
        np.testing.assert_array_equal(prep.data[k], ds.data[k])
        np.testing.assert_array_equal(prep.difficult[k], ds.difficult[k])
    # Back to VOC: the same objects as the original XML files.
    coco_to_voc(tmp_path / "voc2007.json", root / "JPEGImages", tmp_path / "VOC2007", classes=prep.classes,
                split="test", link="symlink")
    back = XML_preprocessor(tmp_path / "VOC2007" / "Annotations")
    assert_same_annotations(prep.annotations, back.annotations)
    assert read_split(tmp_path / "VOC2007", "test") == read_split(root, "test")
    assert os.path.islink(tmp_path / "VOC2007" / "JPEGImages" / "000001.jpg")


def test_roboflow_export_to_voc_and_back(tmp_path):
    export = shared_path("voc2007_roboflow_coco")
    counts = coco_root_to_voc(export, tmp_path / "voc", link="symlink")
    assert counts == {"valid": {"images": 1004, "objects": 3072, "classes": 20}}
    ann_file = export / "valid" / "_annotations.coco.json"
    original = json.loads(ann_file.read_text())
    ids = read_split(tmp_path / "voc", "val")  # Roboflow's "valid" is VOC's "val"
    assert len(ids) == 1004
    # 000032: Roboflow's [103, 77, 271, 105] -> <xmin>104 <ymin>78 <xmax>374 <ymax>182.
    key = next(i for i in ids if i.startswith("000032_jpg"))
    ann = parse_annotation(tmp_path / "voc" / "Annotations" / f"{key}.xml",
                           classes=tuple(c["name"] for c in original["categories"][1:]))
    np.testing.assert_array_equal(ann.boxes[0], [104, 78, 374, 182])
    voc_to_coco(tmp_path / "voc", tmp_path / "back.json", split="val")
    back = json.loads((tmp_path / "back.json").read_text())
    names = {c["id"]: c["name"] for c in original["categories"]}
    back_names = {c["id"]: c["name"] for c in back["categories"]}

    def boxes_by_file(doc, cat_names):
        files = {i["id"]: i["file_name"] for i in doc["images"]}
        out = {}
        for a in doc["annotations"]:
            out.setdefault(files[a["image_id"]], []).append((cat_names[a["category_id"]], a["bbox"]))
        return out

    assert boxes_by_file(original, names) == boxes_by_file(back, back_names)
    assert {i["file_name"]: (i["width"], i["height"]) for i in original["images"]} == \
        {i["file_name"]: (i["width"], i["height"]) for i in back["images"]}


def test_xml_is_escaped_and_floats_kept(tmp_path):
    ann = Annotation("a&b <1>.jpg", 100, 50, np.array([[1.5, 2, 10.25, 20]]), np.array([1]), np.array([True]))
    text = annotation_xml(ann, ("R&D <dept>",))
    assert "R&amp;D &lt;dept&gt;" in text and "a&amp;b &lt;1&gt;.jpg" in text
    (tmp_path / "a.xml").write_text(text)
    parsed = parse_annotation(tmp_path / "a.xml", classes=("R&D <dept>",))
    assert parsed.filename == "a&b <1>.jpg"
    np.testing.assert_array_equal(parsed.boxes, ann.boxes)
    assert parsed.difficult.tolist() == [True]


def test_crowd_boxes_and_sub_folders(tmp_path):
    doc = {"images": [{"id": 1, "file_name": "x/a.jpg", "width": 60, "height": 40},
                      {"id": 2, "file_name": "y/a.jpg", "width": 60, "height": 40},
                      {"id": 3, "file_name": "none.jpg", "width": 60, "height": 40}],
           "categories": [{"id": 1, "name": "cat"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 1},
                           {"id": 2, "image_id": 2, "category_id": 1, "bbox": [5, 5, 10.5, 10]}]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    for name in ("x/a.jpg", "y/a.jpg", "none.jpg"):
        (tmp_path / "img" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "img" / name).write_bytes(name.encode())
    counts = coco_to_voc(tmp_path / "ann.json", tmp_path / "img", tmp_path / "voc", link="copy")
    assert counts == {"images": 3, "objects": 2, "classes": 1}
    assert read_split(tmp_path / "voc", "train") == ["none", "x__a", "y__a"]
    assert (tmp_path / "voc" / "JPEGImages" / "y__a.jpg").read_bytes() == b"y/a.jpg"
    crowd = parse_annotation(tmp_path / "voc" / "Annotations" / "x__a.xml", classes=("cat",))
    assert crowd.difficult.tolist() == [True]  # crowd -> difficult
    floats = parse_annotation(tmp_path / "voc" / "Annotations" / "y__a.xml", classes=("cat",))
    np.testing.assert_array_equal(floats.boxes, [[6, 6, 15.5, 15]])
    empty = parse_annotation(tmp_path / "voc" / "Annotations" / "none.xml", classes=("cat",))
    assert empty.boxes.shape == (0, 4)
    # Same classes.txt needed to add another split to the folder.
    doc["categories"] = [{"id": 1, "name": "dog"}]
    (tmp_path / "dog.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match="classes.txt names the classes"):
        coco_to_voc(tmp_path / "dog.json", tmp_path / "img", tmp_path / "voc", split="val")
    # Two names that flatten to one VOC id.
    doc["images"][2]["file_name"] = "x__a.jpg"
    (tmp_path / "img" / "x__a.jpg").write_bytes(b"")
    (tmp_path / "clash.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match="would both become VOC image 'x__a'"):
        coco_to_voc(tmp_path / "clash.json", tmp_path / "img", tmp_path / "voc2")
    with pytest.raises(UserError, match="VOC folder not found"):
        voc_to_coco(tmp_path / "nowhere", tmp_path / "o.json")


def test_one_pixel_coco_box_round_trips_through_voc(tmp_path):
    # COCO [10, 10, 1, 30] is one pixel wide: VOC <xmin>11</xmin> <xmax>11</xmax> (inclusive), which the
    # VOC reader accepts and voc_to_coco turns back into the same COCO box.
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}],
           "categories": [{"id": 1, "name": "pole"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 1, 30], "iscrowd": 0},
                           {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 10, 20, 1], "iscrowd": 0}]}
    (tmp_path / "a.json").write_text(json.dumps(doc))
    (tmp_path / "a.jpg").write_bytes(b"picture")
    coco_to_voc(tmp_path / "a.json", tmp_path, tmp_path / "voc", link="copy")
    prep = XML_preprocessor(tmp_path / "voc" / "Annotations")
    np.testing.assert_array_equal(prep.annotations["a.jpg"].boxes, [[11, 11, 11, 40], [51, 11, 70, 11]])
    np.testing.assert_allclose(prep.data["a.jpg"][:, :4], [[0.11, 0.1375, 0.11, 0.5], [0.51, 0.1375, 0.7, 0.1375]])
    voc_to_coco(tmp_path / "voc", tmp_path / "back.json")
    assert [a["bbox"] for a in json.loads((tmp_path / "back.json").read_text())["annotations"]] == \
        [[10, 10, 1, 30], [50, 10, 20, 1]]


def small_coco(folder, images=3):
    """A COCO file of ``images`` one-box pictures in ``folder``; returns its path."""
    doc = {"images": [{"id": i, "file_name": f"p{i}.jpg", "width": 60, "height": 40} for i in range(1, images + 1)],
           "categories": [{"id": 1, "name": "cat"}],
           "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [5, 5, 20, 10]}
                           for i in range(1, images + 1)]}
    for i in range(1, images + 1):
        (folder / f"p{i}.jpg").write_bytes(b"picture %d" % i)
    (folder / "ann.json").write_text(json.dumps(doc))
    return folder / "ann.json"


def tree(folder):
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, dirs, files in os.walk(folder)
                  for n in dirs + files)


def test_voc_to_coco_outputs_that_cannot_be_written(synthetic, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "folder").mkdir()
    for out, reason in [(tmp_path / "folder", "it is a folder"),
                        (tmp_path / "afile" / "o.json", f"{tmp_path / 'afile'} is a file, not a folder"),
                        ("/proc/ssd300-none/o.json", "No such file or directory")]:
        with pytest.raises(UserError, match=rf"^{re.escape(str(out))}: cannot write the COCO JSON "
                                            rf"\({re.escape(reason)}\)$"):
            voc_to_coco(synthetic, out)
    assert tree(tmp_path) == ["afile", "folder"]

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # A failed write leaves neither the file nor the folders made for it.
    monkeypatch.setattr(json, "dump", disk_full)
    with pytest.raises(UserError, match=r"new/sub/o.json: cannot write the COCO JSON \(No space left on device\)"):
        voc_to_coco(synthetic, tmp_path / "new" / "sub" / "o.json")
    assert tree(tmp_path) == ["afile", "folder"]


def test_coco_to_voc_outputs_that_cannot_be_written(tmp_path, monkeypatch):
    source = tmp_path / "src"
    source.mkdir()
    ann = small_coco(source)
    (tmp_path / "afile").write_text("x")
    for out, reason in [(tmp_path / "afile", "a file of that name exists; a folder is needed"),
                        (tmp_path / "afile" / "voc", f"{tmp_path / 'afile'} is a file, not a folder")]:
        with pytest.raises(UserError, match=rf"^{re.escape(str(out))}: cannot write the VOC dataset "
                                            rf"\({re.escape(reason)}\)$"):
            coco_to_voc(ann, source, out)
    with pytest.raises(UserError, match=r"^/proc/ssd300-none/voc: cannot write the VOC dataset \(No such file"):
        coco_to_voc(ann, source, "/proc/ssd300-none/voc")
    # Something in the way inside the VOC folder: refused before anything is written.
    (tmp_path / "voc" / "Annotations" / "p2.xml").mkdir(parents=True)
    with pytest.raises(UserError, match=r"voc/Annotations/p2.xml: cannot write the VOC dataset \(it is a folder\)"):
        coco_to_voc(ann, source, tmp_path / "voc")
    assert tree(tmp_path / "voc") == ["Annotations", os.path.join("Annotations", "p2.xml")]
    (tmp_path / "voc2").mkdir()
    (tmp_path / "voc2" / "JPEGImages").write_text("x")
    with pytest.raises(UserError, match=r"voc2/JPEGImages: cannot write the VOC dataset \(a file of that name"):
        coco_to_voc(ann, source, tmp_path / "voc2")
    assert tree(tmp_path / "voc2") == ["JPEGImages"]
    # An input image that vanished after the COCO file was read: named as unreadable; the new VOC
    # folder is removed again.
    import ssd300.convert

    def load_then_lose_an_image(*args, **kwargs):
        dataset = load_coco(*args, **kwargs)
        os.remove(source / "p3.jpg")
        return dataset

    monkeypatch.setattr(ssd300.convert, "load_coco", load_then_lose_an_image)
    with pytest.raises(UserError, match=rf"^{re.escape(str(source / 'p3.jpg'))}: cannot read \(No such file"):
        coco_to_voc(ann, source, tmp_path / "new" / "voc", link="copy")
    assert not (tmp_path / "new").exists()


def test_coco_to_voc_failing_half_way_removes_what_it_created(tmp_path, monkeypatch):
    import ssd300.convert

    source = tmp_path / "src"
    source.mkdir()
    ann = small_coco(source)
    coco_to_voc(ann, source, tmp_path / "voc", split="train", link="copy")
    before = tree(tmp_path / "voc")
    assert len(before) == 12  # 3 folders, ImageSets/Main, 3 + 3 files, train.txt, classes.txt
    writes = []
    real = ssd300.convert.annotation_xml

    def full_on_third(*args):
        writes.append(1)
        if len(writes) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args)

    monkeypatch.setattr(ssd300.convert, "annotation_xml", full_on_third)
    # Into a new folder: nothing is left of it.
    with pytest.raises(UserError, match=r"fresh/voc: cannot write the VOC dataset \(No space left on device\)"):
        coco_to_voc(ann, source, tmp_path / "fresh" / "voc", link="copy")
    assert not (tmp_path / "fresh").exists()
    # Adding a split to an existing folder: the folder is as it was (same ids, rewritten with the same content).
    writes.clear()
    with pytest.raises(UserError, match=r"voc: cannot write the VOC dataset \(No space left on device\)"):
        coco_to_voc(ann, source, tmp_path / "voc", split="val", link="copy")
    assert tree(tmp_path / "voc") == before


def test_synthetic_dataset_outputs_that_cannot_be_written(tmp_path, monkeypatch):
    import ssd300.synth

    (tmp_path / "afile").write_text("x")
    for out, reason in [(tmp_path / "afile" / "s", f"{tmp_path / 'afile'} is a file, not a folder"),
                        ("/proc/ssd300-none/s", "No such file or directory")]:
        with pytest.raises(UserError, match=rf"^{re.escape(str(out))}: cannot write the dataset "
                                            rf"\({re.escape(reason)}\)$"):
            make_synthetic_voc(out, images=2)
    with pytest.raises(FileExistsError, match="afile already exists"):
        make_synthetic_voc(tmp_path / "afile", images=2)
    with pytest.raises(UserError, match=r"afile: cannot write the dataset \(a file of that name exists"):
        make_synthetic_voc(tmp_path / "afile", images=2, overwrite=True)
    assert tree(tmp_path) == ["afile"] and (tmp_path / "afile").read_text() == "x"
    # A disk that fills up half-way: no half dataset, no work folder, no folder made for it.
    real, calls = ssd300.synth.synthetic_image, []

    def full_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(ssd300.synth, "synthetic_image", full_on_third)
    with pytest.raises(UserError, match=r"new/sub/s: cannot write the dataset \(No space left on device\)$"):
        make_synthetic_voc(tmp_path / "new" / "sub" / "s", images=4, size_range=(40, 60))
    assert tree(tmp_path) == ["afile"]


def test_synthetic_dataset_folder_has_the_mode_of_a_new_folder(tmp_path):
    """Not mkdtemp's private 0700: other users read the demo's cached dataset like any folder."""
    import stat

    from ssd300.synth import make_synthetic_voc

    umask = os.umask(0o022)  # a common umask, whatever the machine's (which could be 077)
    try:
        root = make_synthetic_voc(tmp_path / "s", images=2, seed=0)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o755
