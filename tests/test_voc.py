"""VOC annotation parsing: real VOC2007 files, generated XML, and every bad case."""

import re
import warnings

import numpy as np
import pytest

from ssd300.voc import (VOC_CLASSES, AnnotationError, XML_preprocessor, parse_annotation,
                        random_split, read_split)
from tests.conftest import shared_path

OBJ = ("<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
       "<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")


def xml(objects="", width=200, height=100, filename="img.jpg", size=True):
    size_xml = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>" if size else ""
    return f"<annotation><filename>{filename}</filename>{size_xml}{objects}</annotation>"


def obj(name="dog", x0=10, y0=20, x1=110, y1=70, difficult=0):
    return OBJ.format(name=name, x0=x0, y0=y0, x1=x1, y1=y1, difficult=difficult)


def write(folder, name, text):
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def test_real_voc2007_sample():
    root = shared_path("voc2007_sample", "VOC2007")
    prep = XML_preprocessor(str(root / "Annotations") + "/")
    assert len(prep.data) == 13
    rows = prep.data["000001.jpg"]
    # 000001.xml: 353x500, dog (48, 240, 195, 371), person (8, 12, 352, 498).
    np.testing.assert_allclose(rows[:, :4], [[48 / 353, 240 / 500, 195 / 353, 371 / 500],
                                             [8 / 353, 12 / 500, 352 / 353, 498 / 500]])
    assert rows.shape == (2, 24)
    assert rows[0, 4 + VOC_CLASSES.index("dog")] == 1 and rows[1, 4 + VOC_CLASSES.index("person")] == 1
    assert sum(len(v) for v in prep.data.values()) == 59
    assert sum(int(v.sum()) for v in prep.difficult.values()) == 9
    no_difficult = XML_preprocessor(root / "Annotations", skip_difficult=True)
    assert sum(len(v) for v in no_difficult.data.values()) == 50
    ids = read_split(root, "test")
    assert len(ids) == 13 and ids[0] == "000001"


def test_generated_xml_and_conventions(tmp_path):
    ann = tmp_path / "Annotations"
    write(ann, "a.xml", xml(obj("dog") + obj("cat", 0, 0, 200, 100, difficult=1), filename="a.jpg"))
    write(ann, "empty.xml", xml(filename="empty.jpg"))
    write(ann, "notes.txt", "ignored")
    prep = XML_preprocessor(ann)  # no trailing slash
    np.testing.assert_allclose(prep.data["a.jpg"][:, :4], [[0.05, 0.2, 0.55, 0.7], [0, 0, 1, 1]])
    assert prep.difficult["a.jpg"].tolist() == [False, True]
    assert prep.data["empty.jpg"].shape == (0, 24)
    custom = XML_preprocessor(str(ann) + "/", classes=("cat", "dog"))
    assert custom.data["a.jpg"].shape == (2, 6)
    np.testing.assert_array_equal(custom.data["a.jpg"][:, 4:], [[0, 1], [1, 0]])
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    assert XML_preprocessor(ann).classes == ("cat", "dog")


@pytest.mark.parametrize("text, message", [
    (xml(obj("unicorn")), "unknown class 'unicorn'"),
    (xml(obj(), size=False), "missing <size>"),
    (xml(obj(), width=0), "size must be positive"),
    (xml("<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax></bndbox></object>"),
     "missing <ymax>"),
    (xml("<object><name>dog</name></object>"), "missing <bndbox>"),
    (xml(obj(x0=51, x1=50)), r"empty box \[51.0, 20.0, 50.0, 70.0\]: need xmax >= xmin and ymax >= ymin"),
    (xml(obj(y0=60, y1=20)), "empty box"),
    (xml(obj(difficult="yes")), r"<difficult> in object 1 \(dog\) is 'yes': expected 0, 1, true or false"),
    (xml(obj(difficult="2")), r"<difficult> in object 1 \(dog\) is '2'"),
    (xml(obj(difficult="-1")), r"<difficult> in object 1 \(dog\) is '-1'"),
    (xml(obj(x1=250)), "outside"),
    (xml(obj(x0=-3)), "outside"),
    (xml(obj(x0="abc")), "not a number"),
    ("<annotation><size>", "not well-formed"),
])
def test_bad_annotations_raise_with_file_and_problem(tmp_path, text, message):
    path = write(tmp_path, "bad.xml", text)
    with pytest.raises(AnnotationError, match=message) as info:
        parse_annotation(path)
    assert "bad.xml" in str(info.value)


def test_bad_objects_can_be_skipped_with_warning(tmp_path):
    path = write(tmp_path / "Annotations", "b.xml", xml(obj("unicorn") + obj("dog") + obj(x1=500)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ann = parse_annotation(path, on_error="warn")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "unknown class 'unicorn'" in messages[0] and messages[0].endswith("object skipped")
    assert "lies outside" in messages[1]
    assert ann.labels.tolist() == [VOC_CLASSES.index("dog") + 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert XML_preprocessor(tmp_path / "Annotations", on_error="warn").data["img.jpg"].shape == (1, 24)
    with pytest.raises(AnnotationError):
        XML_preprocessor(tmp_path / "Annotations")


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<annotation><filename>&lol3;</filename><size><width>1</width><height>1</height></size></annotation>"""

EXTERNAL = """<?xml version="1.0"?>
<!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<annotation><filename>&xxe;</filename><size><width>1</width><height>1</height></size></annotation>"""


@pytest.mark.parametrize("text", [BILLION_LAUGHS, EXTERNAL])
def test_malicious_xml_is_refused(tmp_path, text):
    path = write(tmp_path, "evil.xml", text)
    with pytest.raises(AnnotationError, match="evil.xml: refused unsafe XML"):
        parse_annotation(path)


def test_missing_folder_and_split(tmp_path):
    with pytest.raises(AnnotationError, match="annotation folder not found"):
        XML_preprocessor(tmp_path / "nope")
    with pytest.raises(AnnotationError, match="trainval.txt: split list not found"):
        read_split(tmp_path, "trainval")
    # The VOC folder instead of its Annotations folder: said, not read as a dataset without images.
    (tmp_path / "VOC" / "Annotations").mkdir(parents=True)
    with pytest.raises(AnnotationError, match=rf"^{tmp_path / 'VOC'}: no .xml files here; the annotations "
                                              rf"are in {tmp_path / 'VOC' / 'Annotations'}$"):
        XML_preprocessor(tmp_path / "VOC")
    assert XML_preprocessor(tmp_path / "VOC" / "Annotations").data == {}
    with pytest.raises(AnnotationError, match="a list of class names is needed, got the string 'cat'"):
        XML_preprocessor(tmp_path / "VOC" / "Annotations", classes="cat")


def test_random_split_is_seeded_and_complete():
    keys = [f"{i}.jpg" for i in range(10)]
    train, val = random_split(keys, 0.7, seed=1)
    assert len(train) == 7 and len(val) == 3 and sorted(train + val) == sorted(keys)
    assert random_split(keys, 0.7, seed=1) == (train, val)


def test_sizes_are_whole_pixels_and_coordinates_finite(tmp_path):
    # "500.0" (some tools write floats) is 500 pixels; the boxes are checked against that size.
    ann = parse_annotation(write(tmp_path, "a.xml", xml(obj(x1="200.0"), width="200.0", height="99.6")))
    assert (ann.width, ann.height) == (200, 100) and isinstance(ann.width, int)
    np.testing.assert_array_equal(ann.boxes, [[10, 20, 200, 70]])
    for bad in ("nan", "inf", "-inf", "1e400"):
        with pytest.raises(AnnotationError, match=rf"a.xml: <xmax> in object 1 <bndbox> is not a finite "
                                                  rf"number: '{bad}'"):
            parse_annotation(write(tmp_path, "a.xml", xml(obj(x1=bad))))
        with pytest.raises(AnnotationError, match=r"<height> in <size> is not a finite number"):
            parse_annotation(write(tmp_path, "a.xml", xml(obj(), height=bad)))


@pytest.mark.parametrize("name, problem", [
    ("x.jpg", None), ("sub/x.jpg", None), ("x..jpg", None), ("..x.jpg", None),
    ("../x.jpg", "points outside"), ("sub/../../x.jpg", "points outside"), ("..", "points outside"),
    ("..\\x.jpg", "points outside"), ("/etc/passwd", "absolute path"), ("\\\\server\\x.jpg", "absolute path"),
    ("C:x.jpg", "absolute path"), ("c:\\x.jpg", "absolute path"),
])
def test_image_path_problem(name, problem):
    from ssd300.voc import image_path_problem

    found = image_path_problem(name)
    assert (found is None) if problem is None else (problem in found and repr(name) in found)


def test_image_path_must_stay_in_the_image_folder(tmp_path):
    with pytest.raises(AnnotationError, match=r"bad.xml: <filename>: file name '../../etc/passwd' points "
                                              r"outside the image folder"):
        parse_annotation(write(tmp_path, "bad.xml", xml(obj(), filename="../../etc/passwd")))
    assert parse_annotation(write(tmp_path, "ok.xml", xml(obj(), filename="sub/a.jpg"))).filename == "sub/a.jpg"


def test_files_skipped_under_warn_are_listed(tmp_path):
    ann = tmp_path / "Annotations"
    write(ann, "good.xml", xml(obj(), filename="good.jpg"))
    write(ann, "bad.xml", "<annotation>")
    with pytest.warns(UserWarning, match="bad.xml: not well-formed XML.*; file skipped"):
        prep = XML_preprocessor(ann, on_error="warn")
    assert list(prep.data) == ["good.jpg"] and list(prep.skipped) == [str(ann / "bad.xml")]
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'warn'"):
        XML_preprocessor(ann, on_error="ignore")
    with pytest.raises(AnnotationError, match=r"class list: class names repeated: 'dog'"):
        XML_preprocessor(ann, classes=("dog", "cat", "dog"))


def test_split_lists(tmp_path):
    main = tmp_path / "ImageSets" / "Main"
    main.mkdir(parents=True)
    write(main, "dog_test.txt", "000001 -1\n000002  1\n\n000003 0\n")
    assert read_split(tmp_path, "dog_test") == ["000001", "000002", "000003"]
    write(main, "twice.txt", "b\na\nb\n")
    with pytest.warns(UserWarning, match=r"twice.txt: 1 repeated ids \(b\) are used once"):
        assert read_split(tmp_path, "twice") == ["b", "a"]
    for text, message in [("a\n../b\n", "entry 2 '../b' is not a plain id"), ("\n \n", "split list is empty"),
                          ("a\\b\n", "entry 1 'a\\\\b' is not a plain id")]:
        write(main, "bad.txt", text)
        with pytest.raises(AnnotationError, match=rf"bad.txt: {re.escape(message)}"):
            read_split(tmp_path, "bad")
    (main / "bad.txt").write_bytes(b"\xff\n")
    with pytest.raises(AnnotationError, match=r"bad.txt: split list is not UTF-8 text"):
        read_split(tmp_path, "bad")


def test_one_pixel_boxes_are_inclusive_voc_boxes(tmp_path):
    # VOC boxes are 1-based and inclusive: xmin == xmax is one pixel wide, as coco_to_voc writes it.
    ann_dir = tmp_path / "Annotations"
    write(ann_dir, "a.xml", xml(obj(x0=11, y0=11, x1=11, y1=40) + obj(x0=5, y0=7, x1=60, y1=7), filename="a.jpg"))
    ann = parse_annotation(ann_dir / "a.xml")
    np.testing.assert_array_equal(ann.boxes, [[11, 11, 11, 40], [5, 7, 60, 7]])
    # The originals' normalisation (x / width) is kept: the rows are zero-wide and zero-high.
    rows = XML_preprocessor(ann_dir).data["a.jpg"]
    np.testing.assert_allclose(rows[:, :4], [[11 / 200, 11 / 100, 11 / 200, 40 / 100],
                                             [5 / 200, 7 / 100, 60 / 200, 7 / 100]])


@pytest.mark.parametrize("text, flag", [("0", False), ("1", True), (" 1 ", True), ("true", True),
                                        ("True", True), ("FALSE", False), ("1.0", True), ("0.0", False),
                                        ("\n\t1.0\n", True), ("", False)])
def test_difficult_values(tmp_path, text, flag):
    ann = parse_annotation(write(tmp_path, "a.xml", xml(obj(difficult=text) + obj("cat"))))
    assert ann.difficult.tolist() == [flag, False]


def test_bad_difficult_value_can_be_skipped_with_warning(tmp_path):
    path = write(tmp_path, "a.xml", xml(obj(difficult="yes") + obj("cat", difficult="TRUE")))
    with pytest.warns(UserWarning, match=r"a.xml: <difficult> in object 1 \(dog\) is 'yes'.*; object skipped"):
        ann = parse_annotation(path, on_error="warn")
    assert ann.labels.tolist() == [VOC_CLASSES.index("cat") + 1] and ann.difficult.tolist() == [True]


def test_lists_with_a_utf8_byte_order_mark(tmp_path):
    # Windows Notepad ("UTF-8 with BOM") and PowerShell 5's Out-File start the file with EF BB BF.
    from ssd300.voc import read_classes_file

    main = tmp_path / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "test.txt").write_bytes(b"\xef\xbb\xbf000001\r\n000002\r\n")
    assert read_split(tmp_path, "test") == ["000001", "000002"]
    (tmp_path / "classes.txt").write_bytes("\ufeffcat\ndog\n".encode("utf8"))
    assert read_classes_file(tmp_path / "classes.txt") == ("cat", "dog")
    write(tmp_path / "Annotations", "000001.xml", xml(obj("cat"), filename="000001.jpg"))
    assert XML_preprocessor(tmp_path / "Annotations", ids=["000001"]).data["000001.jpg"][0, 4:].tolist() == [1, 0]
