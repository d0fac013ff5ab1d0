"""Exported detectors (ONNX, SavedModel, LiteRT) run by their own runtimes against the Keras detector."""

import os

import keras
import numpy as np
import pytest

from ssd300.decode_detections import DecodeDetections
from ssd300.detect import Detector
from ssd300.errors import UserError
from ssd300.export import (FORMATS, ExportCheckError, ExportError, check_export, compare_detections,
                           export_detector, run_exported)
from ssd300.image_io import load_image, preprocess_input, resize
from ssd300.inference import CaffePreprocess, inference_model
from ssd300.layout import num_columns
from tests.conftest import ROOT, random_boxes

pytestmark = pytest.mark.skipif(keras.config.backend() != "tensorflow",
                                reason="the detector exports from the TensorFlow backend only")

PICS = sorted((ROOT / "pics").glob("*.jpg"))
SUFFIX = {"onnx": ".onnx", "tf_saved_model": "", "litert": ".tflite"}
# The decoder-only model: predictions in, detections out (no network).
P, C = 120, 4


@pytest.fixture(scope="module")
def decoder():
    inputs = keras.Input((P, num_columns(C)), name="predictions")
    return keras.Model(inputs, DecodeDetections(keep_top_k=50)(inputs), name="decoder")


def decoder_inputs(seed=0, batch=3):
    """Predictions with ties: few distinct boxes and scores, half the boxes their prior."""
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 6, 0.1, 0.4)
    priors = np.concatenate([boxes[rng.integers(0, 6, P)], np.tile([0.1, 0.1, 0.2, 0.2], (P, 1))], 1)
    scores = rng.choice([0.0, 0.005, 0.02, 0.25, 0.5], size=(batch, P, C))
    loc = rng.normal(0, 0.3, (batch, P, 4))
    loc[:, ::2] = 0.0
    return np.concatenate([loc, scores, np.broadcast_to(priors, (batch, P, 8))], -1).astype(np.float32)


def listing(folder):
    return sorted(os.listdir(folder))


# --- bad input: nothing is written ------------------------------------------------------------


def test_unknown_format(decoder, tmp_path):
    with pytest.raises(ExportError, match=r"unknown export format 'pt'; choose one of onnx, "
                                          r"tf_saved_model, litert"):
        export_detector(decoder, tmp_path / "x.pt", "pt")
    assert listing(tmp_path) == []
    assert issubclass(ExportError, UserError)


def test_backend_that_cannot_export(decoder, tmp_path, monkeypatch):
    monkeypatch.setattr(keras.config, "backend", lambda: "jax")
    for format in FORMATS:
        with pytest.raises(ExportError, match=rf"the jax backend cannot export the detector to "
                                              rf"{format}.*KERAS_BACKEND=tensorflow"):
            export_detector(decoder, tmp_path / f"x{SUFFIX[format]}", format)
    assert listing(tmp_path) == []


def test_output_path_that_cannot_be_written(decoder, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match=r"file/sub/x.onnx: cannot create the folder"):
        export_detector(decoder, tmp_path / "file" / "sub" / "x.onnx", "onnx")
    with pytest.raises(ExportError, match=r"/proc/x.onnx: cannot write in the folder /proc"):
        export_detector(decoder, "/proc/x.onnx", "onnx")
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(ExportError, match=r"dir.onnx: is a directory; onnx writes a .onnx file"):
        export_detector(decoder, tmp_path / "dir.onnx", "onnx")
    with pytest.raises(ExportError, match=r"file: is a file; tf_saved_model writes a SavedModel"):
        export_detector(decoder, tmp_path / "file", "tf_saved_model")
    with pytest.raises(ExportError, match=r"x.lite: a LiteRT file must end with .tflite"):
        export_detector(decoder, tmp_path / "x.lite", "litert")
    assert listing(tmp_path) == ["dir.onnx", "file"]
    assert listing(tmp_path / "dir.onnx") == []


@pytest.mark.parametrize("format", ["onnx", "tf_saved_model"])
def test_a_failed_export_leaves_the_old_file(decoder, tmp_path, monkeypatch, format):
    path = tmp_path / f"model{SUFFIX[format]}"
    if format == "tf_saved_model":
        path.mkdir()
        (path / "saved_model.pb").write_text("old")
    else:
        path.write_text("old")

    def half_written(target, **kwargs):
        if format == "tf_saved_model":
            os.makedirs(target)
            target = os.path.join(target, "saved_model.pb")
        with open(target, "w") as f:
            f.write("partial")
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(decoder, "export", half_written)
    with pytest.raises(RuntimeError, match="converter crashed"):
        export_detector(decoder, path, format)
    assert listing(tmp_path) == [path.name]
    old = path / "saved_model.pb" if format == "tf_saved_model" else path
    assert old.read_text() == "old"


def test_options_need_a_bare_ssd_model(decoder, tmp_path):
    with pytest.raises(ValueError, match="already decodes its detections"):
        export_detector(decoder, tmp_path / "x.onnx", "onnx", nms_thresh=0.3)
    with pytest.raises(ValueError, match=r"output is SSD predictions"):
        inference_model(keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Dense(2)]))
    assert listing(tmp_path) == []


# --- the decoder alone: ties, runtimes' top_k and NMS loops -----------------------------------


def exported_decoder(decoder, folder, format):
    return export_detector(decoder, folder / f"decoder{SUFFIX[format]}", format)


@pytest.mark.parametrize("format", [
    "tf_saved_model", "litert", pytest.param("onnx", marks=pytest.mark.slow)])
def test_exported_decoder_gives_the_layers_detections(decoder, tmp_path, format):
    path = exported_decoder(decoder, tmp_path, format)
    for seed, batch in ((0, 3), (1, 1)):  # the batch size is free
        predictions = decoder_inputs(seed, batch)
        expected = decoder.predict_on_batch(predictions)
        assert any(len(np.unique(s[:n])) < n for s, n in zip(expected["scores"], expected["num_detections"]))
        stats = check_export(path, format, predictions, expected, atol=1e-6)
        assert stats["images"] == batch and stats["detections"] == expected["num_detections"].sum() > 0


def test_re_export_replaces_a_saved_model(decoder, tmp_path):
    path = exported_decoder(decoder, tmp_path, "tf_saved_model")
    inputs = keras.Input((P, num_columns(C)), name="predictions")
    smaller = keras.Model(inputs, DecodeDetections(keep_top_k=5)(inputs))
    assert export_detector(smaller, path, "tf_saved_model") == path
    assert run_exported(path, "tf_saved_model", decoder_inputs())["boxes"].shape == (3, 5, 4)
    assert listing(tmp_path) == [os.path.basename(path)]


def test_check_export_reports_a_difference(decoder, tmp_path):
    path = exported_decoder(decoder, tmp_path, "litert")
    predictions = decoder_inputs()
    expected = dict(decoder.predict_on_batch(predictions))
    expected["scores"] = expected["scores"] + np.float32(1e-3)
    with pytest.raises(ExportCheckError, match=r"decoder.tflite: the exported litert model differs "
                                               r"from the Keras detector: image 0: scores differ"):
        check_export(path, "litert", predictions, expected)
    expected["num_detections"] = expected["num_detections"] - 1
    assert compare_detections(run_exported(path, "litert", predictions), expected).endswith(
        f"{expected['num_detections'][0] + 1} detections instead of {expected['num_detections'][0]}")
    with pytest.raises(ExportError, match="no such exported model"):
        run_exported(tmp_path / "missing.tflite", "litert", predictions)


# --- preprocessing --------------------------------------------------------------------------


def test_caffe_preprocess_is_preprocess_input(tmp_path):
    images = np.stack([resize(load_image(p), (64, 80)) for p in PICS])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(CaffePreprocess()(images)),
                                  preprocess_input(images))
    # A tiny stand-in network: the inference model saves and loads.
    net_in = keras.Input((8, 8, 3))
    net = keras.Model(net_in, keras.layers.Reshape((64, num_columns(3)))(
        keras.layers.Conv2D(num_columns(3), 1)(net_in)))
    detector = inference_model(net, keep_top_k=10, nms_thresh=0.3)
    assert detector.input.dtype == "uint8" and detector.input.shape == (None, 8, 8, 3)
    small = images[:, :8, :8]
    expected = detector.predict_on_batch(small)
    detector.save(tmp_path / "detector.keras")
    loaded = keras.saving.load_model(tmp_path / "detector.keras")
    assert compare_detections(loaded.predict_on_batch(small), expected, atol=0) is None
    assert loaded.get_layer("decode_detections").nms_thresh == 0.3


# --- a whole SSD: the five photos ------------------------------------------------------------

SIZE, NUM_CLASSES = 64, 4


def peaked_ssd():
    """SSD300 at 64x64 (330 priors, 3 classes) whose detections are not trivial.

    Random weights give near-uniform scores. Here the heads' kernels are
    scaled down and their biases set: the background's logit 8 everywhere,
    and a class's 9-10.5 on a few anchor shapes (all positions) of four
    heads, so ~120 priors per picture are candidates with scores that depend
    on the picture (0.67-0.99), the rest far below the threshold; decoded
    boxes move with the picture and NMS keeps ~30 per picture.
    """
    from ssd300.ssd_v2 import HEADS, SSD300

    keras.utils.set_random_seed(0)
    model = SSD300((SIZE, SIZE, 3), num_classes=NUM_CLASSES)
    peaks = {"conv4_3_norm": {3: [0]}, "fc7": {1: [0, 1]}, "conv6_2": {2: [0, 1, 2, 3, 4, 5]},
             "pool6": {3: [0, 1, 2]}}
    for source, *_ in HEADS:
        conf, loc = ((f"pool6_mbox_conf_flat_{NUM_CLASSES}", "pool6_mbox_loc_flat") if source == "pool6"
                     else (f"{source}_mbox_conf_{NUM_CLASSES}", f"{source}_mbox_loc"))
        for name in (conf, loc):
            layer = model.get_layer(name)
            kernel, bias = layer.get_weights()
            bias = np.zeros_like(bias)
            if name == conf:
                logits = bias.reshape(-1, NUM_CLASSES)  # (anchors, classes)
                logits[:, 0] = 8.0
                for label, anchors in peaks.get(source, {}).items():
                    logits[anchors, label] = 9.0 + 0.5 * label
            layer.set_weights([kernel * 0.4, bias])
    return model


@pytest.fixture(scope="module")
def photos():
    return [load_image(p) for p in PICS]


@pytest.fixture(scope="module")
def ssd():
    model = peaked_ssd()
    return model, inference_model(model)


@pytest.fixture(scope="module")
def exported(ssd, tmp_path_factory):
    folder = tmp_path_factory.mktemp("exported")
    return {f: export_detector(ssd[0], folder / f"ssd{SUFFIX[f]}", f) for f in FORMATS}


@pytest.mark.slow
@pytest.mark.parametrize("format", list(FORMATS))
def test_exported_ssd_on_the_photos(ssd, exported, photos, format):
    images = np.stack([resize(p, (SIZE, SIZE)) for p in photos])
    stats = check_export(exported[format], format, images, ssd[1], atol=1e-4)
    assert stats["images"] == 5 and stats["detections"] > 5 * 10
    assert stats["max_score_diff"] <= 1e-4 and stats["max_box_diff"] <= 1e-4


@pytest.mark.slow
def test_onnx_runtime_detector_equals_detector(ssd, exported, photos):
    from ssd300.onnx_runtime import OnnxDetector

    expected = Detector(ssd[0], ["a", "b", "c"]).detect_arrays(photos)
    onnx = OnnxDetector(exported["onnx"])
    assert onnx.input_size == (SIZE, SIZE)
    got = onnx.detect_arrays(photos)
    assert len(got) == 5
    for g, e, photo in zip(got, expected, photos):
        h, w = photo.shape[:2]
        assert g.shape == e.shape and len(e) > 10
        np.testing.assert_array_equal(g[:, 0], e[:, 0])
        np.testing.assert_allclose(g[:, 1], e[:, 1], rtol=0, atol=1e-4)
        np.testing.assert_allclose(g[:, 2:] / [w, h, w, h], e[:, 2:] / [w, h, w, h], rtol=0, atol=1e-4)
        assert set(np.unique(e[:, 0])) == {1.0, 2.0, 3.0}
    files, sizes = onnx.detect_files(PICS, batch_size=2)  # other batches: other rounding
    assert sizes == [(p.shape[1], p.shape[0]) for p in photos]
    for g, f in zip(got, files):
        np.testing.assert_array_equal(g[:, 0], f[:, 0])
        np.testing.assert_allclose(g[:, 1:], f[:, 1:], rtol=1e-5)


def test_onnx_detector_refuses_other_files(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from ssd300.onnx_runtime import OnnxDetector, OnnxModelError

    with pytest.raises(OnnxModelError, match="missing.onnx: ONNX model not found"):
        OnnxDetector(tmp_path / "missing.onnx")
    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(OnnxModelError, match="text.onnx: not a readable ONNX model"):
        OnnxDetector(tmp_path / "text.onnx")
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              tmp_path / "identity.onnx")
    with pytest.raises(OnnxModelError, match="identity.onnx: not an SSD detector exported by"):
        OnnxDetector(tmp_path / "identity.onnx")
