"""``PictureDetector``: resizing to the input size and boxes in each picture's pixel frame."""

import numpy as np
import pytest

from ssd300.detect import PictureDetector


class Fixed(PictureDetector):
    """Two detections per picture, normalised; records the batches it was given."""

    input_size = (6, 4)  # (height, width)

    def __init__(self, per_picture=None):
        self.batches = []
        self.per_picture = per_picture

    def detect_batch(self, batch):
        self.batches.append(batch)
        det = np.array([[2, 0.9, 0.1, 0.2, 0.5, 1.0], [1, 0.3, 0.0, 0.0, 1.0, 0.5]])
        return [det] * (len(batch) if self.per_picture is None else self.per_picture)


def test_boxes_come_in_each_pictures_pixels():
    detector = Fixed()
    images = [np.zeros((30, 40, 3), np.uint8), np.full((7, 11, 3), 200, np.uint8)]
    first, second = detector.detect_arrays(images)
    (batch,) = detector.batches
    assert batch.shape == (2, 6, 4, 3) and batch.dtype == np.uint8 and batch[1].min() == 200
    np.testing.assert_allclose(first, [[2, 0.9, 4, 6, 20, 30], [1, 0.3, 0, 0, 40, 15]])
    np.testing.assert_allclose(second, [[2, 0.9, 1.1, 1.4, 5.5, 7], [1, 0.3, 0, 0, 11, 3.5]])
    # An annotation's frame (width, height) replaces the array's own size where given.
    framed, own = detector.detect_arrays(images, sizes=[(400, 300), None])
    np.testing.assert_allclose(framed[:, 2:], [[40, 60, 200, 300], [0, 0, 400, 150]])
    np.testing.assert_allclose(own, second)
    assert detector.detect_arrays([]) == []


def test_gray_rgba_and_pil_pictures_are_made_rgb_and_others_refused():
    from PIL import Image

    detector = Fixed()
    gray = np.arange(30 * 40, dtype=np.uint8).reshape(30, 40)
    rgb = np.stack([gray] * 3, -1)
    rgba = np.concatenate([rgb, np.full((30, 40, 1), 9, np.uint8)], -1)
    found = detector.detect_arrays([gray, rgba, Image.fromarray(rgb), rgb])
    first = detector.batches[0]
    for i in range(3):
        np.testing.assert_array_equal(first[i], first[3])
        np.testing.assert_array_equal(found[i], found[3])
    with pytest.raises(ValueError, match=r"^image 1: expected uint8 values 0-255, got float64"):
        detector.detect_arrays([rgb, rgb / 255.0])
    with pytest.raises(ValueError, match=r"^detect_arrays takes a list of pictures, got one array of shape"):
        detector.detect_arrays(rgb)
    assert len(detector.batches) == 1


def test_a_detect_batch_that_loses_pictures_is_an_error():
    images = [np.zeros((5, 5, 3), np.uint8)] * 3
    with pytest.raises(RuntimeError, match=r"^Fixed.detect_batch returned 2 results for 3 pictures$"):
        Fixed(per_picture=2).detect_arrays(images)
    with pytest.raises(ValueError, match="3 images but 1 sizes"):
        Fixed().detect_arrays(images, sizes=[(1, 1)])


def test_every_public_name_loads_from_its_module():
    import importlib

    import ssd300

    assert "Detector" in ssd300.__all__ and "PictureDetector" not in ssd300.__all__
    for name in ssd300.__all__:
        value = getattr(ssd300, name)
        if callable(value):  # classes and functions: defined in the module that holds them
            module = importlib.import_module(value.__module__)
            assert module.__name__.startswith("ssd300.") and getattr(module, name) is value, name
    assert ssd300.VOC_CLASSES[0] == "aeroplane" and len(ssd300.VOC_CLASSES) == 20
    assert ssd300.Detector is importlib.import_module("ssd300.detect").Detector


@pytest.mark.slow
@pytest.mark.parametrize("first", ["from ssd300 import DecodeDetections", "import ssd300.inference",
                                   "import ssd300.ssd_layers", "from ssd300 import SSD300"])
def test_whichever_module_imports_keras_first_every_layer_registers(first):
    """`import keras` inside a layer module registers ssd300's layers while that module is half done."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = (f"{first}\nimport keras\nprint(sorted(n for n in ('Normalize', 'PriorBox', 'DilatedConv2D', "
            "'DecodeDetections', 'CaffePreprocess') if keras.saving.get_registered_object('ssd300>' + n)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == str(sorted(["CaffePreprocess", "DecodeDetections", "DilatedConv2D",
                                                       "Normalize", "PriorBox"]))


def test_detector_checks_its_model_classes_and_options():
    from ssd300 import SSD300
    from ssd300.detect import Detector
    from ssd300.errors import UserError

    model = SSD300((64, 64, 3), num_classes=4)
    assert Detector(model, ["a", "b", "c"]).bbox_util.num_classes == 4
    with pytest.raises(UserError, match=r"^Detector: 2 class names for a model that detects 3 classes \+ background$"):
        Detector(model, ["a", "b"])
    with pytest.raises(UserError, match=r"^Detector classes: a list of class names is needed, got the string 'abc'$"):
        Detector(model, "abc")
    with pytest.raises(UserError, match=r"^Detector classes: class names repeated: 'a'$"):
        Detector(model, ["a", "a", "c"])
    with pytest.raises(TypeError, match=r"^Detector needs a Keras SSD model, got str"):
        Detector("w.h5", ["a", "b", "c"])
    with pytest.raises(ValueError, match="keep_top_k must be a positive integer or None, got -1"):
        Detector(model, ["a", "b", "c"], keep_top_k=-1)
    with pytest.raises(ValueError, match="confidence_threshold must be a finite number, got nan"):
        Detector(model, ["a", "b", "c"], confidence_threshold=float("nan"))


def test_evaluate_voc_refuses_annotations_of_other_classes():
    """Labels are positions in the class list: the same names in another order scored the wrong boxes."""
    from types import SimpleNamespace

    from ssd300.errors import UserError

    detector = Fixed()
    detector.classes = ("cat", "dog")
    swapped = SimpleNamespace(data={}, annotations={}, classes=("dog", "cat"))
    with pytest.raises(UserError, match=r"^the detector's classes \['cat', 'dog'\] are not the annotations' "
                                        r"\['dog', 'cat'\]"):
        detector.evaluate_voc("nowhere", swapped)
    with pytest.raises(TypeError, match=r"^annotations must be a dataset read with XML_preprocessor .*got str$"):
        detector.evaluate_voc("nowhere", "VOC2007/Annotations")
    assert detector.batches == []
