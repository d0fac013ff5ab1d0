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
    with pytest.raises(TypeError, match=r"^inference_model needs a Keras SSD model, got str"):
        inference_model("w.h5")
    from ssd300.priors import priors_from_model

    with pytest.raises(TypeError, match=r"^priors_from_model needs a Keras SSD model, got str \(load a .pkl "
                                        r"with load_priors\)$"):
        priors_from_model("prior_boxes_ssd300.pkl")
    assert listing(tmp_path) == []


# --- the decoder alone: ties, runtimes' top_k and NMS loops -----------------------------------


def exported_decoder(decoder, folder, format):
    return export_detector(decoder, folder / f"decoder{SUFFIX[format]}", format)


@pytest.mark.parametrize("format", [
    "tf_saved_model", "litert", pytest.param("onnx", marks=pytest.mark.slow)])
def test_exported_decoder_gives_the_layers_detections(decoder, tmp_path, format):
    path = export_detector(decoder, tmp_path / f"decoder{SUFFIX[format]}", format, classes=("a", "b", "c"))
    if format == "onnx":  # the class count (C, the background included) and the names are recorded
        import onnx

        assert {p.key: p.value for p in onnx.load(path).metadata_props} == {
            "num_classes": str(C), "class_names": '["a", "b", "c"]'}
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
def exported(ssd, cli_exported_onnx, tmp_path_factory):
    folder = tmp_path_factory.mktemp("exported")
    files = {f: export_detector(ssd[0], folder / f"ssd{SUFFIX[f]}", f) for f in FORMATS if f != "onnx"}
    # The command line's export of the same weights (export_detector inside): one conversion for both files.
    files["onnx"] = str(cli_exported_onnx["onnx"])
    return files


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
    # Given frames (an annotation's size), boxes come in them, as from the Keras detector.
    frames = [(2 * p.shape[1], 3 * p.shape[0]) for p in photos]
    framed, framed_sizes = onnx.detect_files(PICS, batch_size=2, sizes=frames)
    assert framed_sizes == frames
    for f, g in zip(framed, files):
        np.testing.assert_allclose(f[:, 2:], g[:, 2:] * [2, 3, 2, 3], rtol=1e-12)
    with pytest.raises(ValueError, match="5 images but 1 sizes"):
        onnx.detect_arrays(photos, sizes=[(1, 1)])


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


# --- the class count an ONNX file records, and reads back ----------------------------------------

#: The fake detector's detections: labels, scores, normalised boxes (and one padding row).
FAKE_LABELS, FAKE_SCORES = (1, 4), (0.9, 0.6)
FAKE_BOXES = ((0.1, 0.2, 0.5, 0.6), (0.25, 0.5, 0.75, 1.0))


def fake_onnx_detector(path, logits=None, metadata=None, size=(8, 8)):
    """A tiny ONNX file with an exported detector's input and outputs (no network).

    Any batch of ``(N, h, w, 3)`` uint8 images gives the same detections for
    each image: ``FAKE_LABELS`` / ``FAKE_SCORES`` / ``FAKE_BOXES`` and a
    padding row (label -1).

    Args:
        logits: ``(num_priors, num_classes)``: also a constant ``Reshape`` to
            ``(-1, num_priors, num_classes)`` feeding one ``Softmax``, as an
            exported SSD's class scores (an extra output ``probabilities``).
        metadata: ``metadata_props`` to record.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k = len(FAKE_LABELS) + 1
    values = {"boxes": np.array([[*FAKE_BOXES, (0, 0, 0, 0)]], np.float32),
              "scores": np.array([[*FAKE_SCORES, 0]], np.float32),
              "classes": np.array([[*FAKE_LABELS, -1]], np.int32),
              "num_detections": np.array([len(FAKE_LABELS)], np.int32)}
    tail = {"boxes": [k, 4], "scores": [k], "classes": [k], "num_detections": []}
    inits = [numpy_helper.from_array(v, f"{name}_value") for name, v in values.items()]
    inits += [numpy_helper.from_array(np.array(t, np.int64), f"{name}_tail") for name, t in tail.items()]
    inits += [numpy_helper.from_array(np.array([0], np.int64), "zero"),
              numpy_helper.from_array(np.array([1], np.int64), "one")]
    nodes = [helper.make_node("Shape", ["images"], ["image_shape"]),
             helper.make_node("Slice", ["image_shape", "zero", "one"], ["batch"])]
    for name in values:  # every output: the constant repeated over the batch
        nodes += [helper.make_node("Concat", ["batch", f"{name}_tail"], [f"{name}_shape"], axis=0),
                  helper.make_node("Expand", [f"{name}_value", f"{name}_shape"], [name])]
    dtype = {"classes": TensorProto.INT32, "num_detections": TensorProto.INT32}
    outputs = [helper.make_tensor_value_info(name, dtype.get(name, TensorProto.FLOAT), ["N", *tail[name]])
               for name in values]
    if logits is not None:
        logits = np.asarray(logits, np.float32)
        inits += [numpy_helper.from_array(logits.reshape(1, -1), "flat_logits"),
                  numpy_helper.from_array(np.array([-1, *logits.shape], np.int64), "logits_shape")]
        nodes += [helper.make_node("Reshape", ["flat_logits", "logits_shape"], ["logits"]),
                  helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
        outputs.append(helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, *logits.shape]))
    graph = helper.make_graph(nodes, "fake_detector",
                              [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", *size, 3])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_onnx_metadata_is_written_without_changing_the_graph(tmp_path):
    import onnx

    from ssd300.export import _write_onnx_metadata
    from ssd300.onnx_runtime import OnnxDetector

    path = fake_onnx_detector(tmp_path / "m.onnx", metadata={"producer_note": "kept"})
    before = onnx.load(path)
    _write_onnx_metadata(path, 5, ["w", "x", "y", "zé"])
    after = onnx.load(path)
    assert after.graph.SerializeToString() == before.graph.SerializeToString()
    assert {p.key: p.value for p in after.metadata_props} == {
        "producer_note": "kept", "num_classes": "5", "class_names": '["w", "x", "y", "zé"]'}
    detector = OnnxDetector(path)
    assert (detector.num_classes, detector.class_names, detector.classes) == (5, ("w", "x", "y", "zé"),
                                                                            ("w", "x", "y", "zé"))
    image = np.zeros((30, 40, 3), np.uint8)
    (det,) = detector.detect_arrays([image])
    np.testing.assert_array_equal(det[:, 0], FAKE_LABELS)
    np.testing.assert_allclose(det[:, 2:], np.array(FAKE_BOXES) * [40, 30, 40, 30], rtol=1e-6)
    # Re-recorded without names: the count only.
    _write_onnx_metadata(path, 3)
    assert (OnnxDetector(path).num_classes, OnnxDetector(path).class_names) == (3, None)


def test_onnx_class_count_from_metadata_graph_or_labels(tmp_path):
    from ssd300.onnx_runtime import OnnxDetector, OnnxModelError, num_classes_from_graph

    image = np.zeros((20, 20, 3), np.uint8)
    recorded = OnnxDetector(fake_onnx_detector(tmp_path / "r.onnx", metadata={"num_classes": "5"}))
    assert (recorded.num_classes, recorded.class_names, recorded.classes) == (5, None, None)
    with pytest.raises(OnnxModelError, match=r"r\.onnx detects 4 classes \+ background, but 2 class names "
                                             r"were given \(a, b\); pass --classes FILE with 4 names"):
        recorded.set_classes(["a", "b"])
    # Exported before the metadata: the count from the graph (one Softmax over (-1, priors, classes)).
    old = fake_onnx_detector(tmp_path / "old.onnx", logits=np.zeros((6, 5)))
    assert num_classes_from_graph(old) == 5 and OnnxDetector(old).num_classes == 5
    with pytest.raises(OnnxModelError, match=r"old\.onnx detects 4 classes \+ background, but 3 class"):
        OnnxDetector(old, classes=["a", "b", "c"])
    # Neither: every label is checked against the names.
    bare = fake_onnx_detector(tmp_path / "bare.onnx")
    assert num_classes_from_graph(bare) is None
    detector = OnnxDetector(bare, classes=["a", "b", "c"])
    assert detector.num_classes is None
    with pytest.raises(OnnxModelError, match=r"bare\.onnx detected label 4, but only 3 class names were "
                                             r"given; the model .* has at least 4 classes"):
        detector.detect_arrays([image])
    detector.set_classes(["a", "b", "c", "d"])
    assert [int(d) for d in detector.detect_arrays([image])[0][:, 0]] == list(FAKE_LABELS)
    for metadata, message in (({"num_classes": "1"}, r"num_classes must be an integer >= 2.*got '1'"),
                              ({"num_classes": "five"}, r"got 'five'"),
                              ({"num_classes": "3", "class_names": '["a"]'},
                               r"class_names is not a JSON list of 2 names"),
                              ({"num_classes": "3", "class_names": "a,b"}, r"not a JSON list")):
        with pytest.raises(OnnxModelError, match=message):
            OnnxDetector(fake_onnx_detector(tmp_path / "broken.onnx", metadata=metadata))


def test_export_refuses_class_names_of_another_length(decoder, tmp_path):
    with pytest.raises(ExportError, match=r"2 class names given for a model of 3 classes \+ background"):
        export_detector(decoder, tmp_path / "x.onnx", "onnx", classes=["a", "b"])
    assert listing(tmp_path) == []
