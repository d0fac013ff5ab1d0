"""Nothing silently wrong: a table of bad inputs and faults, each with its exact outcome.

Every case builds its broken input itself and checks one of two outcomes:

* a clear error that names the file (or option) and the problem: an
  :class:`ssd300.errors.UserError` from the library, and ``error: ...`` with
  exit status 2 from the command line, without a traceback; or
* where the user asked for skipping (``--skip-bad-annotations``,
  ``--skip-bad-images``, ``on_error="warn"``), a warning that names the file
  and a result without the bad part.

Cases marked ``xfail(strict=True)`` fail today; their reason says which
module must change. The command line is run in this process
(``ssd300.cli.main`` / ``train_main``); cases that need a model use 64x64
inputs. Related cases elsewhere: a NaN loss stops training and keeps the
last good checkpoint (``tests/test_training.py::test_nan_loss_stops_with_message``),
more COCO records (``tests/test_coco.py``), more prior files
(``tests/test_priors_and_weights.py``).

Two Hypothesis fuzzers feed the annotation readers generated (and mangled)
files and assert that only ``AnnotationError`` / ``UserError`` escapes and
that whatever is accepted is usable. ``SSD300_FUZZ_EXAMPLES`` sets their
number of examples (default 40, derandomised; set it, e.g. to 20000, for a
long random run).
"""

import json
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import time
import warnings
from xml.sax.saxutils import escape

import h5py
import numpy as np
import pytest

from ssd300.checkpoint import load_checkpoint, save_checkpoint
from ssd300.coco import load_coco
from ssd300.errors import UserError
from ssd300.image_io import ImageError, open_rgb
from ssd300.priors import PriorFileError, load_priors
from ssd300.synth import make_synthetic_voc
from ssd300.voc import (AnnotationError, XML_preprocessor, image_path_problem, parse_annotation,
                        read_classes_file, read_split)
from ssd300.weights import (WeightFileError, check_class_count, num_classes_in_file,
                            read_weight_file)
from tests.conftest import ROOT
from tests.test_priors_and_weights import write_keras2_weights
from tests.test_voc import BILLION_LAUGHS, EXTERNAL, obj, xml

SIZE = "64"
FUZZ_EXAMPLES = int(os.environ.get("SSD300_FUZZ_EXAMPLES", "40"))


# --------------------------------------------------------------------------- helpers


def run_cli(capsys, *argv, train=False):
    """Run ``ssd300 ARGV`` (or ``ssd_training.py ARGV``) here: ``(status, stdout, stderr)``.

    argparse's own errors exit with status 2 through ``SystemExit``. A
    traceback (any other exception) fails the test.
    """
    from ssd300.cli import main, train_main

    try:
        status = (train_main if train else main)([str(a) for a in argv])
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return status, out, err


def train_args(root, out, *extra):
    """A training run that fails, or finishes, fast: 64x64, 2 batches of 2."""
    return ["--voc-root", root, "--out", out, "--input-size", SIZE, "--batch-size", "2",
            "--steps-per-epoch", "2", "--workers", "1", "--epochs", "1", "--no-progress", *extra]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """A valid synthetic VOC folder (12 pictures, 4 classes); copy it before breaking it."""
    return make_synthetic_voc(tmp_path_factory.mktemp("voc") / "VOC", images=12, seed=5,
                              style="simple")


@pytest.fixture
def broken(voc, tmp_path):
    """A copy of the synthetic VOC folder to break."""
    copy = tmp_path / "VOC"
    shutil.copytree(voc, copy)
    return copy


@pytest.fixture(scope="module")
def weights_4_classes(tmp_path_factory):
    """``w4.h5``: SSD300 weights trained (here: initialised) for 4 classes + background."""
    from ssd300.ssd_v2 import SSD300v2
    from ssd300.weights import save_weights_by_name

    path = tmp_path_factory.mktemp("weights") / "w4.h5"
    save_weights_by_name(SSD300v2((64, 64, 3), num_classes=5), path)
    return path


def write_bytes(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf8") if isinstance(content, str) else content)
    return path


class _RunsCode:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --------------------------------------------------------------------------- VOC XML

GOOD_JPEG = None  # filled by _jpeg_bytes()


def _jpeg_bytes():
    global GOOD_JPEG
    if GOOD_JPEG is None:
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (48, 40), (200, 30, 30)).save(buffer, "JPEG", quality=90)
        GOOD_JPEG = buffer.getvalue()
    return GOOD_JPEG


VOC_XML_CASES = [
    # (id, content of bad.xml (str, bytes, or "DIR" for a folder named bad.xml), message)
    ("nan-xmin", xml(obj(x0="nan")), r"<xmin> in object 1 <bndbox> is not a finite number: 'nan'"),
    ("inf-xmax", xml(obj(x1="inf")), r"<xmax> in object 1 <bndbox> is not a finite number: 'inf'"),
    ("minus-inf-ymin", xml(obj(y0="-Infinity")), r"<ymin> .* not a finite number: '-Infinity'"),
    ("overflow-1e999", xml(obj(y1="1e999")), r"<ymax> .* not a finite number: '1e999'"),
    ("nan-width", xml(obj(), width="NaN"), r"<width> in <size> is not a finite number: 'NaN'"),
    ("inf-height", xml(obj(), height="inf"), r"<height> in <size> is not a finite number"),
    ("negative-coordinate", xml(obj(x0=-3)), r"object 1 \(dog\) box .* lies outside the 200x100 image"),
    ("non-numeric-coordinate", xml(obj(x0="12px")), r"<xmin> in object 1 <bndbox> is not a number: '12px'"),
    ("huge-coordinate", xml(obj(x1=1e30)), r"lies outside the 200x100 image"),
    ("out-of-image-coordinate", xml(obj(y1=101)), r"lies outside the 200x100 image"),
    ("empty-box", xml(obj(x0=51, x1=50)), r"object 1 \(dog\) has an empty box"),
    ("inverted-box", xml(obj(y0=60, y1=20)), r"has an empty box"),
    ("missing-size", xml(obj(), size=False), r"missing <size>"),
    ("zero-size", xml(obj(), width=0), r"image size must be positive, got 0x100"),
    ("negative-size", xml(obj(), height=-5), r"image size must be positive, got 200x-5"),
    ("sub-pixel-size", xml("", width=0.4), r"image size must be positive, got 0.4x100"),
    ("unknown-class", xml(obj("unicorn")), r"object 1 has unknown class 'unicorn'"),
    ("missing-bndbox", xml("<object><name>dog</name></object>"), r"missing <bndbox> in object 1"),
    ("missing-coordinate", xml("<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                               "<xmax>5</xmax></bndbox></object>"), r"missing <ymax> in object 1"),
    ("non-utf8-bytes", b"<annotation><filename>\xff\xfe.jpg</filename></annotation>",
     r"not well-formed XML \(not well-formed \(invalid token\)"),
    ("entity-bomb", BILLION_LAUGHS, r"refused unsafe XML \(EntitiesForbidden"),
    ("external-entity", EXTERNAL, r"refused unsafe XML \(EntitiesForbidden"),
    ("malformed-xml", "<annotation><size>", r"not well-formed XML"),
    ("empty-file", b"", r"not well-formed XML \(no element found"),
    ("binary-garbage", bytes(range(256)), r"not well-formed XML"),
    ("directory-named-xml", "DIR", r"cannot read \(Is a directory\)"),
    ("filename-traversal", xml(obj(), filename="../../etc/passwd"),
     r"<filename>: file name '../../etc/passwd' points outside the image folder"),
    ("filename-absolute", xml(obj(), filename="/etc/passwd"),
     r"<filename>: file name '/etc/passwd' is an absolute path"),
    ("filename-windows-absolute", xml(obj(), filename="C:\\data\\x.jpg"), r"is an absolute path"),
    ("filename-backslash-traversal", xml(obj(), filename="..\\..\\x.jpg"),
     r"points outside the image folder"),
]


@pytest.mark.parametrize("content, message", [c[1:] for c in VOC_XML_CASES],
                         ids=[c[0] for c in VOC_XML_CASES])
def test_voc_xml(tmp_path, content, message):
    path = tmp_path / "bad.xml"
    if content == "DIR":
        path.mkdir()
    else:
        write_bytes(path, content)
    with pytest.raises(AnnotationError, match=message) as info:
        parse_annotation(path)
    assert str(info.value).startswith(f"{path}: ") or str(info.value).startswith(f"{path} ")


def test_voc_xml_without_objects_is_a_negative_image(tmp_path):
    """Not an error: VOC lists pictures without objects; they train as background."""
    folder = tmp_path / "Annotations"
    write_bytes(folder / "none.xml", xml("", filename="none.jpg"))
    prep = XML_preprocessor(folder)
    assert prep.data["none.jpg"].shape == (0, 24)


def test_voc_filename_in_a_subfolder_is_allowed():
    assert image_path_problem("sub/x.jpg") is None and image_path_problem("x..y.jpg") is None
    assert "points outside" in image_path_problem("sub/../../x.jpg")


def test_voc_bad_objects_and_files_are_skipped_when_asked(tmp_path):
    folder = tmp_path / "Annotations"
    write_bytes(folder / "a.xml", xml(obj("dog") + obj(x0="nan"), filename="a.jpg"))
    write_bytes(folder / "b.xml", xml(obj(), width="inf", filename="b.jpg"))
    write_bytes(folder / "c.xml", "<annotation>")
    write_bytes(folder / "d.xml", xml(obj(), filename="../d.jpg"))
    with pytest.warns(UserWarning) as caught:
        prep = XML_preprocessor(folder, on_error="warn")
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 4, messages
    assert "a.xml: <xmin> in object 2 <bndbox> is not a finite number: 'nan'; object skipped" in messages[0]
    assert "b.xml: <width> in <size> is not a finite number: 'inf'; file skipped" in messages[1]
    assert "c.xml: not well-formed XML" in messages[2] and messages[2].endswith("file skipped")
    assert "d.xml: <filename>: file name '../d.jpg' points outside" in messages[3]
    assert list(prep.data) == ["a.jpg"] and prep.data["a.jpg"].shape == (1, 24)
    assert sorted(os.path.basename(p) for p in prep.skipped) == ["b.xml", "c.xml", "d.xml"]


def test_two_annotation_files_for_one_image(tmp_path):
    """The second file would replace the first one's boxes without a word."""
    folder = tmp_path / "Annotations"
    write_bytes(folder / "a.xml", xml(obj("dog"), filename="same.jpg"))
    write_bytes(folder / "b.xml", xml(obj("cat"), filename="same.jpg"))
    with pytest.raises(AnnotationError, match=r"b.xml: annotates image 'same.jpg', as .*a.xml does"):
        XML_preprocessor(folder)
    with pytest.warns(UserWarning, match="b.xml: annotates image 'same.jpg'.*file skipped"):
        prep = XML_preprocessor(folder, on_error="warn")
    assert prep.data["same.jpg"][0, 4 + prep.classes.index("dog")] == 1


@pytest.mark.parametrize("content, message", [
    ("cat\ndog\ncat\n", r"classes.txt: class names repeated: 'cat'"),
    (b"cat\n\xff\xfedog\n", r"classes.txt: class list is not UTF-8 text"),
    ("\n\n", r"classes.txt: no class names"),
], ids=["classes-repeated", "classes-not-utf8", "classes-empty"])
def test_class_lists(tmp_path, content, message):
    path = write_bytes(tmp_path / "classes.txt", content)
    with pytest.raises(AnnotationError, match=message):
        read_classes_file(path)


def test_repeated_class_names_through_the_cli(broken, tmp_path, capsys):
    write_bytes(tmp_path / "classes.txt", "circle\nsquare\ncircle\n")
    status, _, err = run_cli(capsys, *train_args(broken, tmp_path / "run", "--classes",
                                                 tmp_path / "classes.txt"), train=True)
    assert status == 2 and "classes.txt: class names repeated: 'circle'" in err


def test_nan_annotation_through_training(broken, tmp_path, capsys):
    path = broken / "Annotations" / "000003.xml"
    path.write_text(re.sub(r"<xmin>[^<]*</xmin>", "<xmin>nan</xmin>", path.read_text(), count=1))
    status, _, err = run_cli(capsys, *train_args(broken, tmp_path / "run", "--split", "all"), train=True)
    assert status == 2
    assert f"error: {broken}/Annotations/000003.xml: <xmin> in object 1 <bndbox> is not a finite number" in err


def test_path_traversal_through_evaluate(broken, tmp_path, capsys):
    test_id = read_split(broken, "test")[0]
    path = broken / "Annotations" / f"{test_id}.xml"
    path.write_text(path.read_text().replace(f"<filename>{test_id}.jpg", "<filename>../../../etc/passwd"))
    status, _, err = run_cli(capsys, "evaluate", "--weights", tmp_path / "unused.h5", "--voc-root", broken,
                             "--input-size", SIZE, "--out", tmp_path / "res")
    assert status == 2
    assert f"{test_id}.xml: <filename>: file name '../../../etc/passwd' points outside" in err


# --------------------------------------------------------------------------- dataset layouts


def _remove(path):
    shutil.rmtree(path) if path.is_dir() else path.unlink()


@pytest.mark.parametrize("change, message", [
    (lambda root: _remove(root), "does not exist"),
    (lambda root: _remove(root / "JPEGImages"), "lacks JPEGImages"),
    (lambda root: _remove(root / "ImageSets/Main/trainval.txt"), "lacks ImageSets/Main/trainval.txt"),
    (lambda root: write_bytes(root / "ImageSets/Main/trainval.txt", "000001\n000099\n"),
     r"Annotations/000099.xml: cannot read \(No such file or directory\)"),
    (lambda root: write_bytes(root / "ImageSets/Main/trainval.txt", "000001\n../../../etc/x\n"),
     r"trainval.txt: entry 2 '../../../etc/x' is not a plain id"),
    (lambda root: write_bytes(root / "ImageSets/Main/trainval.txt", b"000001\n\xff000002\n"),
     r"trainval.txt: split list is not UTF-8 text"),
    (lambda root: write_bytes(root / "ImageSets/Main/trainval.txt", "\n"), r"trainval.txt: split list is empty"),
], ids=["missing-root", "missing-JPEGImages", "missing-split-list", "split-names-missing-id",
        "split-id-traversal", "split-list-not-utf8", "split-list-empty"])
def test_dataset_layouts(broken, tmp_path, capsys, change, message):
    change(broken)
    status, _, err = run_cli(capsys, *train_args(broken, tmp_path / "run"), train=True)
    assert status == 2
    assert str(broken) in err
    assert re.search(message, err), err


def test_split_naming_a_missing_id_is_skipped_when_asked(broken):
    from ssd300.datasets import read_voc

    write_bytes(broken / "ImageSets/Main/trainval.txt", "000001\n000099\n000002\n")
    with pytest.warns(UserWarning, match=r"000099.xml: cannot read .*; file skipped"):
        prep = read_voc(broken, "trainval", on_error="warn")
    assert sorted(prep.data) == ["000001.jpg", "000002.jpg"]


def test_duplicate_ids_in_a_split_list_are_used_once_with_a_warning(broken):
    write_bytes(broken / "ImageSets/Main/trainval.txt", "000002\n000001\n000002 1\n000001\n000003\n")
    with pytest.warns(UserWarning, match=r"trainval.txt: 2 repeated ids \(000002, 000001\) are used once"):
        assert read_split(broken, "trainval") == ["000002", "000001", "000003"]


# --------------------------------------------------------------------------- COCO JSON


def coco_doc():
    """Two 48x40 images with a box each, one category."""
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 48, "height": 40},
                   {"id": 2, "file_name": "b.jpg", "width": 48, "height": 40}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [4, 5, 20, 10]},
                        {"id": 11, "image_id": 2, "category_id": 3, "bbox": [1, 2, 30, 30]}],
        "categories": [{"id": 3, "name": "cat"}],
    }


def _set(section, index, key, value):
    doc = coco_doc()
    doc[section][index][key] = value
    return doc


COCO_CASES = [
    ("coco-bad-json", '{"images": [', r"not valid JSON"),
    ("coco-missing-key", '{"images": [], "categories": []}', r"no 'annotations' list"),
    ("coco-unknown-image-id", _set("annotations", 1, "image_id", 9), r"annotation id 11: image_id 9 is not in 'images'"),
    ("coco-unknown-category-id", _set("annotations", 1, "category_id", 4),
     r"annotation id 11: category_id 4 is not in 'categories'"),
    ("coco-nan-bbox", _set("annotations", 1, "bbox", [1, float("nan"), 3, 4]),
     r"annotation id 11: bbox has a value that is not finite: \[1, nan, 3, 4\]"),
    ("coco-negative-width", _set("annotations", 1, "bbox", [30, 2, -10, 4]), r"needs a positive width and height"),
    ("coco-box-outside", _set("annotations", 1, "bbox", [40, 2, 30, 4]), r"lies outside the 48x40 image b.jpg"),
    ("coco-inf-image-width", _set("images", 1, "width", float("inf")),
     r"image id 2: \(b.jpg\) width and height must be positive numbers, got inf x 40"),
    ("coco-traversal-file-name", _set("images", 1, "file_name", "../../b.jpg"),
     r"image id 2: file_name '../../b.jpg' points outside the image folder"),
    ("coco-missing-image", _set("images", 1, "file_name", "gone.jpg"), r"image id 2: image .*gone.jpg not found"),
]


@pytest.mark.parametrize("doc, message", [c[1:] for c in COCO_CASES], ids=[c[0] for c in COCO_CASES])
def test_coco_json(tmp_path, doc, message):
    path = write_bytes(tmp_path / "ann.json", doc if isinstance(doc, str) else json.dumps(doc))
    write_bytes(tmp_path / "a.jpg", _jpeg_bytes())
    write_bytes(tmp_path / "b.jpg", _jpeg_bytes())
    with pytest.raises(AnnotationError, match=message) as info:
        load_coco(path, tmp_path)
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("doc, message", [c[1:] for c in COCO_CASES if c[0] in (
    "coco-bad-json", "coco-nan-bbox", "coco-traversal-file-name", "coco-missing-image")],
    ids=["cli-coco-bad-json", "cli-coco-nan-bbox", "cli-coco-traversal-file-name", "cli-coco-missing-image"])
def test_coco_json_through_training(tmp_path, capsys, doc, message):
    path = write_bytes(tmp_path / "ann.json", doc if isinstance(doc, str) else json.dumps(doc))
    write_bytes(tmp_path / "img" / "a.jpg", _jpeg_bytes())
    write_bytes(tmp_path / "img" / "b.jpg", _jpeg_bytes())
    status, _, err = run_cli(capsys, "--coco-json", path, "--images", tmp_path / "img",
                             *train_args(tmp_path / "unused", tmp_path / "run")[2:], train=True)
    assert status == 2
    assert re.search(rf"error: {re.escape(str(path))}: .*{message}", err), err


def test_coco_bad_records_are_skipped_when_asked(tmp_path):
    doc = coco_doc()
    doc["annotations"][1]["bbox"] = [1, float("nan"), 3, 4]
    path = write_bytes(tmp_path / "ann.json", json.dumps(doc))
    with pytest.warns(UserWarning, match=r"annotation id 11: bbox has a value that is not finite.*record skipped"):
        ds = load_coco(path, on_error="warn")
    assert list(ds.data) == ["a.jpg"]
    np.testing.assert_allclose(ds.data["a.jpg"], [[5 / 48, 6 / 40, 24 / 48, 15 / 40, 1]])


def test_coco_file_without_annotations(tmp_path):
    doc = coco_doc()
    doc["annotations"] = []
    path = write_bytes(tmp_path / "ann.json", json.dumps(doc))
    assert load_coco(path).data == {}
    ds = load_coco(path, keep_empty=True)
    assert ds.classes == () and ds.data["a.jpg"].shape == (0, 4)


def test_coco_sub_pixel_image_size(tmp_path):
    doc = coco_doc()
    doc["images"][1].update(width=0.4, height=0.4)
    doc["annotations"][1]["bbox"] = [0, 0, 0.3, 0.3]
    path = write_bytes(tmp_path / "ann.json", json.dumps(doc))
    with pytest.raises(AnnotationError, match=r"image id 2: \(b.jpg\) width and height"):
        load_coco(path)


@pytest.mark.parametrize("bbox", [[10, 10, 0.5, 4],  # half a pixel wide
                                  [47.5, 0, 1.5, 4]])  # clipped to the last half pixel column
def test_coco_sub_pixel_box_is_refused_not_inverted(tmp_path, bbox):
    path = write_bytes(tmp_path / "ann.json", json.dumps(_set("annotations", 1, "bbox", bbox)))
    with pytest.raises(AnnotationError, match=r"annotation id 11: bbox .* is under one pixel wide or high "
                                              r"inside the 48x40 image b.jpg"):
        load_coco(path)


# --------------------------------------------------------------------------- training data


def _config(**fields):
    """The dataset fields of a ``TrainConfig`` (its defaults), all that ``load_training_data`` reads."""
    from types import SimpleNamespace

    defaults = dict(voc_root="VOCdevkit/VOC2007", coco_json=None, images=None, split="trainval",
                    classes=None, val_fraction=0.1, seed=0, skip_difficult=False,
                    skip_bad_annotations=False)
    return SimpleNamespace(**{**defaults, **fields})


def _all_difficult(root):
    for path in (root / "Annotations").glob("*.xml"):
        text = path.read_text()
        assert "<difficult>0</difficult>" in text
        path.write_text(text.replace("<difficult>0</difficult>", "<difficult>1</difficult>"))
    # The objects of the training list.
    return sum((root / "Annotations" / f"{i}.xml").read_text().count("<object>")
               for i in read_split(root, "trainval"))


def test_no_object_to_train_on_voc(broken):
    """Every object difficult with --skip-difficult: refused, as the COCO reader refuses it."""
    from ssd300.datasets import load_training_data

    objects, images = _all_difficult(broken), len(read_split(broken, "trainval"))
    assert load_training_data(_config(voc_root=str(broken))).train_keys  # kept without the option
    with pytest.raises(UserError, match=rf"^{re.escape(str(broken))} \(split 'trainval'\): no object to "
                                        rf"train on \({images} images with annotations; --skip-difficult "
                                        rf"left out the {objects} difficult objects\)$"):
        load_training_data(_config(voc_root=str(broken), skip_difficult=True))
    # Images without objects only.
    for path in (broken / "Annotations").glob("*.xml"):
        path.write_text(re.sub(r"<object>.*?</object>", "", path.read_text(), flags=re.S))
    with pytest.raises(UserError, match=r"no object to train on \(\d+ images with annotations\)$"):
        load_training_data(_config(voc_root=str(broken)))


def test_no_object_to_train_on_through_the_cli(broken, tmp_path, capsys):
    _all_difficult(broken)
    status, _, err = run_cli(capsys, *train_args(broken, tmp_path / "run", "--skip-difficult"), train=True)
    assert status == 2 and "no object to train on" in err and "--skip-difficult left out" in err, err
    assert not (tmp_path / "run").exists()


def test_no_object_to_train_on_coco(tmp_path):
    from ssd300.datasets import load_training_data

    doc = coco_doc()
    for ann in doc["annotations"]:
        ann["difficult"] = 1
    path = write_bytes(tmp_path / "ann.json", json.dumps(doc))
    write_bytes(tmp_path / "a.jpg", _jpeg_bytes())
    write_bytes(tmp_path / "b.jpg", _jpeg_bytes())
    assert len(load_training_data(_config(coco_json=str(path))).train_keys) == 1
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: no object to train on \(0 images with "
                                        rf"annotations; --skip-difficult leaves out the difficult objects\)$"):
        load_training_data(_config(coco_json=str(path), skip_difficult=True))


def test_val_fraction_that_leaves_no_training_image(voc):
    from ssd300.datasets import load_training_data

    # trainval of the synthetic set: its images, of which 0.9 leave round(0.1 n) for training.
    n = len(read_split(voc, "trainval"))
    data = load_training_data(_config(voc_root=str(voc), val_fraction=0.9))
    assert len(data.train_keys) == round(0.1 * n) >= 1 and len(data.val_keys) == n - len(data.train_keys)
    with pytest.raises(UserError, match=rf"^{re.escape(str(voc))} \(split 'trainval'\): val-fraction 0.99 of "
                                        rf"{n} images leaves no training image \(use less than 0.9\d*\)$"):
        load_training_data(_config(voc_root=str(voc), val_fraction=0.99))


def test_coco_file_without_images_folder_checks_its_images(tmp_path):
    """The JSON file's folder is checked as an --images folder is, before training."""
    from ssd300.datasets import load_training_data

    doc = coco_doc()
    doc["images"].append({"id": 3, "file_name": "c.jpg", "width": 48, "height": 40})
    doc["annotations"].append({"id": 12, "image_id": 3, "category_id": 3, "bbox": [1, 2, 3, 4]})
    path = write_bytes(tmp_path / "ann.json", json.dumps(doc))
    write_bytes(tmp_path / "a.jpg", _jpeg_bytes())
    write_bytes(tmp_path / "b.jpg", _jpeg_bytes())
    with pytest.raises(AnnotationError, match=rf"^{re.escape(str(path))}: image id 3: image .*c.jpg not found"):
        load_training_data(_config(coco_json=str(path)))
    write_bytes(tmp_path / "c.jpg", _jpeg_bytes())
    data = load_training_data(_config(coco_json=str(path)))
    assert data.image_dir == str(tmp_path) and len(data.train_keys) + len(data.val_keys) == 3


def test_coco_options_that_would_be_ignored(tmp_path):
    from ssd300.datasets import load_training_data

    split = tmp_path / "export" / "valid"
    path = write_bytes(split / "_annotations.coco.json", json.dumps(coco_doc()))
    write_bytes(split / "a.jpg", _jpeg_bytes())
    write_bytes(split / "b.jpg", _jpeg_bytes())
    # A split folder of a Roboflow export, given directly.
    data = load_training_data(_config(coco_json=str(split)))
    assert data.image_dir == str(split) and sorted(data.train_keys + data.val_keys) == ["a.jpg", "b.jpg"]
    with pytest.raises(UserError, match=rf"{re.escape(str(split))} is a dataset folder: .*--images"):
        load_training_data(_config(coco_json=str(split), images=str(tmp_path)))
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))} is a COCO JSON file, which has no splits: "
                                        rf"--split test"):
        load_training_data(_config(coco_json=str(path), split="test"))


# --------------------------------------------------------------------------- images

IMAGE_CASES = [
    ("image-corrupt", lambda: _jpeg_bytes()[:20] + bytes(range(200)) * 3, r"not a readable image"),
    ("image-empty", lambda: b"", r"not a readable image \(UnidentifiedImageError"),
    ("image-truncated-jpeg", lambda: _jpeg_bytes()[: len(_jpeg_bytes()) // 2], r"not a readable image \(OSError"),
    ("image-text-named-jpg", lambda: b"hello, I am text\n", r"not a readable image \(UnidentifiedImageError"),
    ("image-missing", None, r"image not found"),
]


@pytest.mark.parametrize("content, message", [c[1:] for c in IMAGE_CASES], ids=[c[0] for c in IMAGE_CASES])
def test_images(tmp_path, content, message):
    path = tmp_path / "x.jpg"
    if content is not None:
        write_bytes(path, content())
    with pytest.raises(ImageError, match=message) as info:
        open_rgb(path)
    assert str(info.value).startswith(f"{path}: ")


def test_bad_images_through_detect(weights_4_classes, tmp_path, capsys):
    """Each bad picture is named with its problem; the good one is still drawn; exit status 1."""
    good = write_bytes(tmp_path / "good.jpg", _jpeg_bytes())
    bad = []
    for case_id, content, _ in IMAGE_CASES:
        path = tmp_path / f"{case_id}.jpg"
        if content is not None:
            write_bytes(path, content())
        bad.append(path)
    write_bytes(tmp_path / "classes.txt", "a\nb\nc\nd\n")
    status, out, err = run_cli(capsys, "detect", "--weights", weights_4_classes, "--classes",
                               tmp_path / "classes.txt", "--input-size", SIZE, "--out", tmp_path / "det",
                               good, *bad)
    assert status == 1
    for (_, _, message), path in zip(IMAGE_CASES, bad):
        assert re.search(rf"error: {re.escape(str(path))}: {message}", err), (path, err)
    assert f"{good}: " in out
    assert list(json.loads((tmp_path / "det" / "detections.json").read_text())) == [str(good)]


def _training_with_bad_images(voc, tmp_path):
    """A copy of ``voc`` where 2 training pictures of the last batch of epoch 0 are a truncated JPEG and text.

    Not in the first batch: Keras reads that one itself, before the training
    loop, and an error there reaches the user unwrapped. The order is
    ``SSDDataset``'s (a permutation by ``(seed, epoch)``), over the training
    keys that ``fit`` draws with the default options (seed 0, 10% held out).

    Returns:
        ``(root, first, second, batch_size, steps)``: a batch size with no
        batch of 2 or fewer pictures (one could hold only the bad two), and
        the batches of one epoch.
    """
    from ssd300.voc import random_split

    root = tmp_path / "VOC"
    shutil.copytree(voc, root)
    keys = sorted(f"{i}.jpg" for i in read_split(root, "trainval"))
    train_keys, _ = random_split(keys, 0.9, seed=0)
    n = len(train_keys)
    batch = next(b for b in range(3, n + 1) if n % b == 0 or n % b >= 3)
    steps = -(-n // batch)
    order = np.random.default_rng([0, 0]).permutation(n)
    first, second = (train_keys[i] for i in order[(steps - 1) * batch:][:2])
    jpeg = (root / "JPEGImages" / first).read_bytes()
    (root / "JPEGImages" / first).write_bytes(jpeg[: len(jpeg) // 3])
    (root / "JPEGImages" / second).write_text("not a picture")
    return root, first, second, batch, steps


@pytest.mark.slow
def test_bad_image_stops_training_with_a_message(voc, tmp_path, capsys):
    root, first, second, batch, steps = _training_with_bad_images(voc, tmp_path)
    status, _, err = run_cli(capsys, *train_args(root, tmp_path / "run", "--batch-size", batch,
                                                 "--steps-per-epoch", steps), train=True)
    assert status == 2
    assert re.search(rf"error: {re.escape(str(root))}/JPEGImages/({first}|{second}): not a readable image",
                     err), err


@pytest.mark.slow
def test_bad_images_are_skipped_in_training_when_asked(voc, tmp_path, capsys):
    root, first, second, batch, steps = _training_with_bad_images(voc, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, out, err = run_cli(capsys, *train_args(root, tmp_path / "run", "--skip-bad-images",
                                                       "--batch-size", batch, "--steps-per-epoch", steps),
                                   train=True)
    assert status == 0, (out, err)
    # The text file leaves the keys at the start (its header is not an image's), the
    # truncated JPEG its batch when it is loaded.
    skipped = {str(w.message) for w in caught if "skipped" in str(w.message)}
    assert any(f"{first}: not a readable image" in m for m in skipped), skipped
    assert any(f"{second}: not a readable image" in m for m in skipped), skipped
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz")[2]["epoch"] == 1


@pytest.mark.slow
def test_bad_images_alone_in_their_batch_are_skipped_when_asked(voc, tmp_path, capsys):
    """Batch size 1: a missing picture and a text file used to leave an empty batch."""
    from ssd300.voc import random_split

    root = tmp_path / "VOC"
    shutil.copytree(voc, root)
    keys = sorted(f"{i}.jpg" for i in read_split(root, "trainval"))
    train_keys, _ = random_split(keys, 0.9, seed=0)
    (root / "JPEGImages" / train_keys[0]).unlink()
    (root / "JPEGImages" / train_keys[1]).write_text("not a picture")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, out, err = run_cli(capsys, *train_args(root, tmp_path / "run", "--skip-bad-images",
                                                       "--batch-size", 1, "--steps-per-epoch", len(train_keys)),
                                   train=True)
    assert status == 0, (out, err)
    skipped = [str(w.message) for w in caught if "cannot be read and are skipped" in str(w.message)]
    assert len(skipped) == 1 and f"2 of {len(train_keys)} training images" in skipped[0], skipped
    assert f"{train_keys[0]}: image not found" in skipped[0] and f"{train_keys[1]}: not a readable" in skipped[0]
    assert f"training on {len(train_keys) - 2} images" in out  # the readable ones
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz")[2]["epoch"] == 1


# --------------------------------------------------------------------------- weights and priors


def test_weights_for_another_class_count_are_named(weights_4_classes):
    voc20 = [f"c{i}" for i in range(20)]
    with pytest.raises(WeightFileError, match=r"w4.h5 holds class heads for 4 classes \+ background, "
                                              r"but 20 class names were given .*pass --classes FILE "
                                              r"with 4 names"):
        check_class_count(weights_4_classes, voc20)
    with pytest.raises(WeightFileError, match=r"with 4 names, in the order the model was trained with "
                                              r"\(or --num-classes 5\)$"):
        check_class_count(weights_4_classes, voc20, num_classes_option=True)
    assert num_classes_in_file(weights_4_classes) == 5
    assert check_class_count(weights_4_classes, ["a", "b", "c", "d"]) == 5


def test_weights_without_class_heads_cannot_detect(weights_4_classes):
    layers = {k: v for k, v in read_weight_file(weights_4_classes).items() if "_mbox_conf" not in k}
    assert num_classes_in_file(layers) is None
    with pytest.raises(WeightFileError, match=r"vgg.h5: holds no SSD300 class heads"):
        check_class_count(layers, ["a"], name="vgg.h5")


def test_class_head_of_the_wrong_width(weights_4_classes):
    layers = read_weight_file(weights_4_classes)
    kernel, bias = layers["fc7_mbox_conf_5"]
    layers["fc7_mbox_conf_5"] = [kernel[..., :29], bias[:29]]  # 29 is not 6 priors x 5 classes
    with pytest.raises(WeightFileError, match=r"x.h5: class head fc7_mbox_conf_5 has 29 outputs"):
        num_classes_in_file(layers, name="x.h5")
    layers["fc7_mbox_conf_5"] = [kernel[..., :18], bias[:18]]  # 3 classes under a 5-class name
    with pytest.raises(WeightFileError, match=r"fc7_mbox_conf_5 holds 3 classes, but a head of that "
                                              r"name belongs to a 5-class model"):
        num_classes_in_file(layers, name="x.h5")


def test_weights_for_another_class_count_through_detect(weights_4_classes, tmp_path, capsys):
    picture = write_bytes(tmp_path / "p.jpg", _jpeg_bytes())
    status, out, err = run_cli(capsys, "detect", "--weights", weights_4_classes, "--input-size", SIZE,
                               "--out", tmp_path / "det", picture)
    assert status == 2, out
    # No class list was given: the message says so, not "20 class names were given".
    assert err == (f"error: {weights_4_classes} holds class heads for 4 classes + background, but no class "
                   f"list was given (--classes FILE, or classes.txt beside the weights), so the 20 VOC "
                   f"classes were assumed; pass --classes FILE with 4 names, in the order the model was "
                   f"trained with\n")
    assert not (tmp_path / "det").exists()


@pytest.mark.parametrize("num_classes", ["21", "3"])
def test_export_num_classes_for_another_class_count(weights_4_classes, tmp_path, capsys, num_classes):
    status, _, err = run_cli(capsys, "export", "--weights", weights_4_classes, "--input-size", SIZE,
                             "--format", "onnx", "--out", tmp_path / "x.onnx", "--num-classes", num_classes)
    assert status == 2
    assert err == (f"error: {weights_4_classes} holds class heads for 4 classes + background, but "
                   f"--num-classes {num_classes} was given; pass --classes FILE with 4 names, in the order "
                   f"the model was trained with (or --num-classes 5)\n")
    assert os.listdir(tmp_path) == []


def test_weights_layer_of_the_wrong_shape_is_named_with_the_shapes(weights_4_classes, tmp_path, capsys):
    """A layer of another shape is reported as such, not as missing; a missing one as missing."""
    bad = tmp_path / "badshape.h5"
    shutil.copy(weights_4_classes, bad)
    with h5py.File(bad, "a") as f:
        group = f["conv1_1"]
        kernel = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]][0]
        del group[kernel]
        group.create_dataset(kernel, data=np.zeros((3, 3, 3, 32), np.float32))
        f.attrs["layer_names"] = [n for n in f.attrs["layer_names"]
                                  if (n.decode() if isinstance(n, bytes) else n) != "fc7"]
    write_bytes(tmp_path / "classes.txt", "a\nb\nc\nd\n")
    picture = write_bytes(tmp_path / "p.jpg", _jpeg_bytes())
    status, _, err = run_cli(capsys, "detect", "--weights", bad, "--classes", tmp_path / "classes.txt",
                             "--input-size", SIZE, "--out", tmp_path / "det", picture)
    assert status == 2
    assert err == (f"error: {bad}: lacks fc7 of the model; conv1_1: shapes differ: model [(3, 3, 3, 64), "
                   f"(64,)], file [(3, 3, 3, 32), (64,)]\n")
    assert not (tmp_path / "det").exists()


def _wrong_architecture(path):
    write_keras2_weights(path, {"dense_1": [np.ones((4, 3), "float32"), np.zeros(3, "float32")]})


def _truncated_hdf5(path, source):
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _pickle_that_runs_code(path):
    path.write_bytes(pickle.dumps(_RunsCode(path.parent / "pwned")))


def _broken_layer_names(path):
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"conv1_1", b"conv1_2"]
        f.create_group("conv1_1").attrs["weight_names"] = [b"conv1_1/kernel:0"]


WEIGHT_FILE_CASES = [
    ("weights-wrong-architecture", lambda p, w4: _wrong_architecture(p),
     r"(no layer of the model found in the file|holds no layer of SSD300)"),
    ("weights-truncated-hdf5", _truncated_hdf5, r"not a readable HDF5 weights file"),
    ("weights-not-hdf5", lambda p, w4: p.write_text("these are not weights"), r"not a readable HDF5 weights file"),
    ("weights-pickle-that-runs-code", lambda p, w4: _pickle_that_runs_code(p), r"not a readable HDF5 weights file"),
    ("weights-broken-layer-names", lambda p, w4: _broken_layer_names(p), r"broken Keras weights file \(KeyError"),
    ("weights-missing", lambda p, w4: None, r"weights file not found"),
]


@pytest.mark.parametrize("make, message", [c[1:] for c in WEIGHT_FILE_CASES], ids=[c[0] for c in WEIGHT_FILE_CASES])
def test_weight_files_through_detect(weights_4_classes, tmp_path, capsys, make, message):
    path = tmp_path / "bad.h5"
    make(path, weights_4_classes)
    picture = write_bytes(tmp_path / "p.jpg", _jpeg_bytes())
    write_bytes(tmp_path / "classes.txt", "a\nb\nc\nd\n")
    status, _, err = run_cli(capsys, "detect", "--weights", path, "--classes", tmp_path / "classes.txt",
                             "--input-size", SIZE, "--out", tmp_path / "det", picture)
    assert status == 2
    assert re.search(rf"error: {re.escape(str(path))}:? {message}", err), err
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("content, message", [
    (lambda d: pickle.dumps(_RunsCode(d / "pwned")), r"refusing to load posix.system"),
    (lambda d: pickle.dumps(np.zeros((7308, 4), np.float32)), r"expected shape \(N, 8\), got \(7308, 4\)"),
], ids=["priors-pickle-that-runs-code", "priors-wrong-shape"])
def test_prior_files(tmp_path, content, message):
    path = write_bytes(tmp_path / "priors.pkl", content(tmp_path))
    with pytest.raises(PriorFileError, match=message) as info:
        load_priors(path)
    assert str(info.value).startswith(f"{path}: ")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"PK\x03\x04 cut short"), r"checkpoint.npz: not a readable checkpoint"),
    (lambda p: save_checkpoint(p, [], [], {"epoch": 1, "classes": ["dog"], "input_size": 64}),
     r"checkpoint.npz: trained for classes \['dog'\] at size 64, not \['circle', "),
], ids=["checkpoint-truncated", "checkpoint-other-classes"])
def test_checkpoints_for_resume(voc, tmp_path, capsys, make, message):
    (tmp_path / "run").mkdir()
    make(tmp_path / "run" / "checkpoint.npz")
    status, _, err = run_cli(capsys, *train_args(voc, tmp_path / "run", "--resume"), train=True)
    assert status == 2
    assert re.search(message, err), err


# --------------------------------------------------------------------------- command-line arguments


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "0"], r"argument --batch-size: must be a positive integer, got 0"),
    (["--batch-size", "-2"], r"argument --batch-size: must be a positive integer, got -2"),
    (["--epochs", "abc"], r"argument --epochs: not an integer: 'abc'"),
    (["--lr", "nan"], r"argument --lr: must be a positive number, got nan"),
    (["--val-fraction", "1.5"], r"argument --val-fraction: must be in \[0, 1\], got 1.5"),
    (["--input-size", "16"], r"error: (argument --)?input-size:? must be at least 32"),
], ids=["batch-size-0", "batch-size-negative", "epochs-not-a-number", "lr-nan", "val-fraction-1.5",
        "input-size-16"])
def test_training_arguments(voc, tmp_path, capsys, extra, message):
    status, _, err = run_cli(capsys, *train_args(voc, tmp_path / "run"), *extra, train=True)
    assert status == 2
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("out", ["/proc/ssd300-run", "FILE/run"], ids=["out-not-writable", "out-under-a-file"])
def test_training_output_folder(voc, tmp_path, capsys, out):
    write_bytes(tmp_path / "FILE", "a regular file")
    out = out.replace("FILE", str(tmp_path / "FILE"))
    status, _, err = run_cli(capsys, *train_args(voc, out), train=True)
    assert status == 2 and f"error: {out}: " in err


def test_detect_output_folder_under_a_file(weights_4_classes, tmp_path, capsys):
    picture = write_bytes(tmp_path / "p.jpg", _jpeg_bytes())
    write_bytes(tmp_path / "FILE", "a regular file")
    write_bytes(tmp_path / "classes.txt", "a\nb\nc\nd\n")
    status, _, err = run_cli(capsys, "detect", "--weights", weights_4_classes, "--classes",
                             tmp_path / "classes.txt", "--input-size", SIZE, "--out", tmp_path / "FILE" / "det",
                             picture)
    assert status == 2 and f"error: {tmp_path / 'FILE' / 'det'}: " in err


def test_detect_input_size_16(weights_4_classes, tmp_path, capsys):
    picture = write_bytes(tmp_path / "p.jpg", _jpeg_bytes())
    write_bytes(tmp_path / "classes.txt", "a\nb\nc\nd\n")
    status, _, err = run_cli(capsys, "detect", "--weights", weights_4_classes, "--classes",
                             tmp_path / "classes.txt", "--input-size", "16", "--out", tmp_path / "det", picture)
    assert status == 2 and "input-size" in err and "32" in err


# --------------------------------------------------------------------------- training faults
# A NaN loss: tests/test_training.py::test_nan_loss_stops_with_message.


def _wait_for_change(path, before, proc, deadline):
    """Wait until ``path``'s mtime differs from ``before`` or the process ends; the new mtime."""
    while time.monotonic() < deadline and proc.poll() is None:
        mtime = path.stat().st_mtime_ns if path.exists() else None
        if mtime != before:
            return mtime
        time.sleep(0.05)
    return path.stat().st_mtime_ns if path.exists() else None


@pytest.mark.slow
def test_kill_9_at_random_moments_leaves_a_checkpoint_that_resumes(voc, tmp_path):
    """``kill -9`` two runs at random moments, then ``--resume`` to the end.

    The first run dies at a random moment after its first checkpoint (in the
    middle of writing the next epoch's ``best.h5``, ``last.h5``,
    ``checkpoint.npz`` or ``log.csv``, or between them); the resumed second
    run at a random moment of its life, start-up included. After each kill
    the checkpoint must load and be consistent, and a last ``--resume`` must
    finish the run. The delays are random (seeded from the OS; the seed is in
    the failure message). Batches of 3 over the 9 training pictures: every
    epoch is 3 whole batches, so the step count is known.
    """
    seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    epochs, steps = 4, 3
    out = tmp_path / "run"
    command = [sys.executable, "ssd_training.py",
               *train_args(voc, out, "--freeze", "conv1_1", "--batch-size", "3", "--steps-per-epoch", str(steps),
                           "--epochs", str(epochs))]
    checkpoint = out / "checkpoint.npz"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    story = [f"seed {seed}"]

    def check_checkpoint():
        _, optimizer_values, state = load_checkpoint(checkpoint)
        assert 1 <= state["epoch"] <= epochs, story
        assert len(state["history"]["loss"]) == state["epoch"], story
        assert int(optimizer_values[0]) == steps * state["epoch"], story
        story.append(f"  checkpoint at epoch {state['epoch']}")
        return state["epoch"]

    first_checkpoint_after = None
    for attempt in range(2):
        argv = command + (["--resume"] if attempt else [])
        with open(tmp_path / f"stderr{attempt}.txt", "w") as stderr:
            started = time.monotonic()
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
            try:
                if attempt == 0:  # after the first checkpoint, so that there is one to resume from
                    _wait_for_change(checkpoint, None, proc, started + 180)
                    first_checkpoint_after = time.monotonic() - started
                    delay = rng.uniform(0.0, 3.0)
                    time.sleep(delay)
                else:  # any moment up to 3 s after the first run's first checkpoint
                    delay = rng.uniform(0.0, first_checkpoint_after + 3.0)
                    while proc.poll() is None and time.monotonic() < started + delay:
                        time.sleep(0.02)
            finally:
                proc.kill()
                proc.wait()
        story.append(f"run {attempt}: killed {time.monotonic() - started:.2f} s after its start "
                     f"(exit {proc.returncode})")
        assert checkpoint.exists(), (story, (tmp_path / f"stderr{attempt}.txt").read_text()[-3000:])
        check_checkpoint()
    started = time.monotonic()
    done = subprocess.run(command + ["--resume"], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
    story.append(f"run 2: resumed to the end in {time.monotonic() - started:.2f} s")
    assert done.returncode == 0, (story, done.stderr[-3000:])
    assert check_checkpoint() == epochs
    with open(out / "log.csv") as f:
        assert [line.split(",")[0] for line in f.read().split()[1:]] == [str(e) for e in range(epochs)]
    assert not [name for name in os.listdir(out) if ".tmp" in name], os.listdir(out)
    assert read_weight_file(out / "last.h5") and read_weight_file(out / "best.h5")
    print("\n".join(story))


@pytest.mark.slow
def test_steps_per_epoch_runs_that_many_steps(voc, tmp_path, capsys):
    # 9 training pictures in 3 whole batches of 3.
    status, _, _ = run_cli(capsys, *train_args(voc, tmp_path / "run", "--epochs", "2", "--batch-size", "3"),
                           train=True)
    assert status == 0
    _, optimizer_values, state = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    assert state["epoch"] == 2 and int(optimizer_values[0]) == 2 * 2


# --------------------------------------------------------------------------- fuzzing the annotation readers

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize="SSD300_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
FUZZ_CLASSES = ("dog", "cat", "person")

def mostly(valid, *odd):
    """``valid`` 5 times in 6, else one of ``odd``: most fields fine, so that files get accepted too."""
    # Hypothesis starts from, and shrinks towards, 0: let 0 mean the valid value.
    return st.integers(0, 5).flatmap(lambda i: st.one_of(*odd) if i == 5 else valid)


ODD_NUMBER_TEXT = st.one_of(
    st.integers(-300, 600).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(-1e3, 1e3).map(lambda v: f"{v:.3f}"),
    st.sampled_from(["nan", "NaN", "-inf", "Infinity", "1e999", "-0", "0x1A", "1_0", " 7 ", "", "٣", "0.4"]),
    st.text(max_size=6),
)
FILE_NAMES = st.one_of(
    st.sampled_from(["a.jpg", "sub/a.jpg", "../a.jpg", "/etc/passwd", "C:\\a.jpg", "..", "a/../../b",
                     "..\\x", "", " "]),
    st.text(max_size=10),
)


def _element(tag, text):
    return "" if text is None else f"<{tag}>{escape(text)}</{tag}>"


@st.composite
def voc_files(draw):
    """Bytes of a VOC annotation: mostly well-formed with odd values, sometimes mangled."""
    if draw(st.integers(0, 9)) == 9:
        return draw(st.binary(max_size=300))
    maybe = lambda s: mostly(s, st.none())  # noqa: E731
    parts = [_element("filename", draw(mostly(st.just("a.jpg"), st.none(), FILE_NAMES)))]
    if draw(mostly(st.just(True), st.just(False))):
        size = mostly(st.integers(50, 300).map(str), ODD_NUMBER_TEXT, st.none())
        parts.append("<size>" + _element("width", draw(size)) + _element("height", draw(size)) + "</size>")
    for _ in range(draw(st.integers(0, 3))):
        x0, y0 = draw(st.integers(0, 60)), draw(st.integers(0, 60))
        valid = (x0, y0, x0 + draw(st.integers(1, 60)), y0 + draw(st.integers(1, 60)))
        box = "".join(_element(t, draw(mostly(st.just(str(v)), ODD_NUMBER_TEXT, st.none())))
                      for t, v in zip(("xmin", "ymin", "xmax", "ymax"), valid))
        parts.append("<object>" + _element("name", draw(mostly(st.sampled_from(FUZZ_CLASSES),
                                                               st.sampled_from(["bird", ""]), st.none())))
                     + _element("difficult", draw(maybe(st.sampled_from(["0", "1", "yes", ""]))))
                     + (f"<bndbox>{box}</bndbox>" if draw(mostly(st.just(True), st.just(False))) else "")
                     + "</object>")
    parts = draw(st.permutations(parts))
    data = ("<annotation>" + "".join(parts) + "</annotation>").encode("utf8")
    if draw(st.integers(0, 4)) == 4:  # splice in some bytes, or cut the file short
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=8)) + data[at + draw(st.integers(0, 8)):]
    return data


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=voc_files(), on_error=st.sampled_from(["raise", "warn"]))
def test_fuzz_voc_parse_annotation(fuzz_dir, data, on_error):
    path = fuzz_dir / "a.xml"
    path.write_bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ann = parse_annotation(path, FUZZ_CLASSES, on_error=on_error)
    except AnnotationError as e:
        assert str(e).startswith(f"{path}: ")
        hypothesis.event("refused")
        return
    hypothesis.event(f"accepted, {'with' if len(ann.labels) else 'without'} boxes")
    # Whatever is accepted is usable: finite boxes inside the image, known labels, a safe file name.
    assert ann.width >= 1 and ann.height >= 1
    boxes = ann.boxes
    assert boxes.shape == (len(ann.labels), 4) and np.isfinite(boxes).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= ann.width).all() and (boxes[:, 3] <= ann.height).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert ((ann.labels >= 1) & (ann.labels <= len(FUZZ_CLASSES))).all()
    assert image_path_problem(ann.filename) is None


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
SMALL_IDS = mostly(st.integers(1, 3), st.integers(0, 9), JSON_VALUES)
SIZES = mostly(st.integers(20, 80), st.integers(-2, 80), st.floats(-1, 100, allow_nan=False), st.floats(0, 2),
               st.sampled_from([float("nan"), float("inf")]), JSON_VALUES)
COORD = mostly(st.integers(0, 15), st.integers(-5, 90), st.floats(-5, 90), st.floats(0, 2),
               st.sampled_from([float("nan"), float("inf"), 1e308]))
NOT_OBJECTS = st.one_of(JSON_SCALARS, st.lists(JSON_SCALARS, max_size=3))


def _record(fields, optional):
    """A dict with ``fields`` and some of ``optional``, sometimes one key short, or another JSON value."""
    full = st.fixed_dictionaries(fields, optional=optional)
    short = st.tuples(full, st.sampled_from(sorted(fields))).map(
        lambda pair: {k: v for k, v in pair[0].items() if k != pair[1]})
    return mostly(full, short, NOT_OBJECTS)


COCO_IMAGE = _record({"id": SMALL_IDS, "file_name": mostly(st.sampled_from(["a.jpg", "b.jpg", "sub/c.jpg"]),
                                                            FILE_NAMES, JSON_VALUES),
                      "width": SIZES, "height": SIZES}, {})
COCO_ANNOTATION = _record({"id": SMALL_IDS, "image_id": SMALL_IDS, "category_id": SMALL_IDS,
                           "bbox": mostly(st.tuples(st.integers(0, 10), st.integers(0, 10), st.integers(1, 10),
                                                    st.integers(1, 10)).map(list),
                                          st.lists(COORD, min_size=4, max_size=4), JSON_VALUES)},
                          {"iscrowd": mostly(st.sampled_from([0, 1]), JSON_VALUES),
                           "difficult": mostly(st.sampled_from([0, 1]), JSON_VALUES),
                           "area": mostly(st.floats(0, 1e4), JSON_VALUES)})
COCO_CATEGORY = _record({"id": SMALL_IDS, "name": mostly(st.sampled_from(FUZZ_CLASSES), JSON_VALUES)}, {})


@st.composite
def coco_files(draw):
    """Text of a COCO JSON file: records with odd or missing fields, sometimes mangled."""
    # Mostly consistent lists (unique ids, every category well-formed: a broken category list
    # refuses the whole file), with odd values in the records.
    images = [{"id": i, "file_name": name, "width": draw(SIZES), "height": draw(SIZES)}
              for i, name in enumerate(["a.jpg", "b.jpg", "sub/c.jpg"][:draw(st.integers(0, 3))], start=1)]
    categories = [{"id": i, "name": name} for i, name in enumerate(FUZZ_CLASSES, start=1)]
    doc = {"images": draw(mostly(st.just(images), st.lists(COCO_IMAGE, max_size=4))),
           "annotations": draw(mostly(st.lists(COCO_ANNOTATION, min_size=1, max_size=6), st.just([]))),
           "categories": draw(mostly(st.just(categories), st.lists(COCO_CATEGORY, max_size=4)))}
    for key in list(doc):
        change = draw(st.integers(0, 30))
        if change == 29:
            del doc[key]
        elif change == 30:
            doc[key] = draw(JSON_VALUES)
    text = json.dumps(doc)
    if draw(st.integers(0, 15)) == 15:
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(max_size=4)) + text[at + draw(st.integers(0, 4)):]
    return text


@FUZZ
@given(text=coco_files(), on_error=st.sampled_from(["raise", "warn"]), check_images=st.booleans(),
       classes=st.sampled_from([None, FUZZ_CLASSES, ("cat",)]), keep_empty=st.booleans())
def test_fuzz_coco_load(fuzz_dir, text, on_error, check_images, classes, keep_empty):
    path = fuzz_dir / "ann.json"
    path.write_text(text)
    images = fuzz_dir / "images"
    if not images.exists():
        for name in ("a.jpg", "b.jpg", "sub/c.jpg"):
            write_bytes(images / name, b"jpeg")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = load_coco(path, images if check_images else None, classes=classes, keep_empty=keep_empty,
                           on_error=on_error)
    except UserError as e:  # AnnotationError is a UserError
        assert str(path) in str(e)
        hypothesis.event("refused")
        return
    hypothesis.event(f"accepted, {'with' if any(len(r) for r in ds.data.values()) else 'without'} boxes")
    for name, rows in ds.data.items():
        assert image_path_problem(name) is None
        assert rows.shape[1] == 4 + len(ds.classes) and np.isfinite(rows).all()
        assert ((rows[:, :4] >= 0) & (rows[:, :4] <= 1)).all()
        assert (rows[:, 2] >= rows[:, 0]).all() and (rows[:, 3] >= rows[:, 1]).all()
        np.testing.assert_array_equal(rows[:, 4:].sum(axis=1), 1)
    for ann in ds.annotations.values():
        assert np.isfinite(ann.boxes).all() and ann.width >= 1 and ann.height >= 1
        assert ((ann.labels >= 1) & (ann.labels <= len(ds.classes))).all()
