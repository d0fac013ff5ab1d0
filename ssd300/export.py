"""Exporting a detector to ONNX, TensorFlow SavedModel or LiteRT, and checking the exported file.

The exported model is :func:`ssd300.inference.inference_model`'s: RGB
``uint8`` images ``(batch, h, w, 3)`` in (any batch size), fixed-size
detections out: ``boxes`` ``(batch, K, 4)`` normalised ``xmin, ymin, xmax,
ymax``, ``scores`` ``(batch, K)``, ``classes`` ``(batch, K)`` int32 and
``num_detections`` ``(batch,)`` int32 (see
:class:`ssd300.decode_detections.DecodeDetections`).

What each Keras backend can export (Keras 3.15, checked here by running the
exported file):

=================  ==========  ===========  ===============================
format             TensorFlow  JAX          PyTorch
=================  ==========  ===========  ===============================
``onnx``           yes         no [#j]_     no: ``Sort`` does not export
``tf_saved_model`` yes         no [#s]_     no: ``torch.export`` fails
``litert``         yes         no (Keras)   no: needs ``litert-torch``,
                                            static shapes only
=================  ==========  ===========  ===============================

.. [#j] needs the ``jax2onnx`` package, which does not convert the NMS loop.
.. [#s] the file is written, but TensorFlow cannot run the JAX program in it
   (``vhlo.composite_v2``: the StableHLO versions differ).

Weights do not depend on the backend: on JAX or PyTorch, load the weights
under ``KERAS_BACKEND=tensorflow`` and export there.

An ONNX file records its class count in its ``metadata_props``:
``num_classes`` (the background included, e.g. ``"21"``) and, when the export
was given the names, ``class_names`` (a JSON list without the background),
which :class:`ssd300.onnx_runtime.OnnxDetector` reads. The graph is the same
with or without them.

Runtimes used by :func:`run_exported` / :func:`check_export`: ``onnxruntime``
for ONNX, TensorFlow for the SavedModel (its ``serve`` endpoint), the LiteRT
interpreter (``ai_edge_litert``, else ``tf.lite``) for ``.tflite`` files, all
on the CPU. The LiteRT file needs only builtin operators (no Flex / select
TensorFlow ops).
"""

import os
import shutil

import numpy as np

from .errors import UserError

#: format -> (what is written, backends that export it).
FORMATS = {
    "onnx": ("a .onnx file", ("tensorflow",)),
    "tf_saved_model": ("a SavedModel directory", ("tensorflow",)),
    "litert": ("a .tflite file", ("tensorflow",)),
}
OUTPUT_NAMES = ("boxes", "scores", "classes", "num_detections")


class ExportError(UserError):
    """An export that cannot be done: unknown format, unsupported backend, unwritable path."""


class ExportCheckError(UserError):
    """An exported file whose detections differ from the Keras detector's."""


def _check_format(format):
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")


def _check_backend(format):
    import keras

    backend = keras.config.backend()
    if backend not in FORMATS[format][1]:
        raise ExportError(
            f"the {backend} backend cannot export the detector to {format} (Keras 3 exports "
            f"its NMS loop only from TensorFlow); run with KERAS_BACKEND=tensorflow, the weights "
            f"load the same there")


def _check_path(path, format):
    """Create ``path``'s folder if needed; refuse a path of the wrong kind or that cannot be written."""
    path = os.fspath(path)
    if format == "tf_saved_model" and len(path) > 1:
        path = path.rstrip(os.sep)
    if format == "litert" and not path.endswith(".tflite"):
        raise ExportError(f"{path}: a LiteRT file must end with .tflite")
    is_dir = format == "tf_saved_model"
    if os.path.exists(path) and os.path.isdir(path) != is_dir:
        kind = "a directory" if os.path.isdir(path) else "a file"
        raise ExportError(f"{path}: is {kind}; {format} writes {FORMATS[format][0]}")
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise ExportError(f"{path}: cannot create the folder {parent} ({e.strerror})") from None
    probe = os.path.join(parent, f".{os.path.basename(path)}.probe{os.getpid()}")
    try:
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ExportError(f"{path}: cannot write in the folder {parent} ({e.strerror})") from None
    return path


def _detector(model, **inference_options):
    """``model`` if it already ends in ``DecodeDetections``, else ``inference_model(model, ...)``."""
    from .decode_detections import DecodeDetections
    from .inference import inference_model

    if any(isinstance(layer, DecodeDetections) for layer in model.layers):
        if inference_options:
            raise ValueError(f"{model.name!r} already decodes its detections; options "
                             f"{sorted(inference_options)} apply only to a bare SSD model")
        return model
    return inference_model(model, **inference_options)


def export_detector(model, path, format="onnx", classes=None, **inference_options):
    """Export a detector to ``path``, atomically: nothing is left half-written on failure.

    Args:
        model: a trained SSD model (wrapped with
            :func:`ssd300.inference.inference_model` and ``inference_options``)
            or a model from ``inference_model``.
        path: the ``.onnx`` / ``.tflite`` file or the SavedModel directory. Its
            folder is created if needed; an existing file (directory) of the
            same kind is replaced only once the new one is complete.
        format: ``"onnx"``, ``"tf_saved_model"`` or ``"litert"``.
        classes: the class names without the background, or ``None``; an
            ONNX file records them (its class count is recorded either way).
        **inference_options: ``confidence_threshold``, ``nms_thresh``,
            ``top_k``, ``keep_top_k``, ``preprocess``, ``max_candidates``.

    Returns:
        ``path``.

    Raises:
        ExportError: unknown format, a backend that cannot export it, a
            runtime package that is missing, a path that cannot be written,
            or ``classes`` of another length than the model's classes.
    """
    _check_format(format)
    _check_backend(format)
    detector = _detector(model, **inference_options)
    num_classes = detector_num_classes(detector)
    if classes is not None and len(classes) + 1 != num_classes:
        raise ExportError(f"{len(classes)} class names given for a model of {num_classes - 1} classes "
                          f"+ background")
    path = _check_path(path, format)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{ext}"
    try:
        try:
            detector.export(tmp, format=format, verbose=False, input_signature=_signature(detector))
            if format == "onnx":
                _write_onnx_metadata(tmp, num_classes, classes)
        except ImportError as e:
            raise ExportError(f"exporting to {format} needs a package that is not installed "
                              f"({e}); install ssd300's 'export' extra") from None
        except OSError as e:
            raise ExportError(f"{path}: cannot write the {format} model ({e})") from None
        _replace(tmp, path)
    finally:
        _remove(tmp)
    return path


def detector_num_classes(detector):
    """The class count (background included) that a model from ``inference_model`` decodes."""
    from .decode_detections import DecodeDetections
    from .layout import num_classes_of

    (decode,) = [layer for layer in detector.layers if isinstance(layer, DecodeDetections)]
    return num_classes_of(decode.input.shape[-1])


def _write_onnx_metadata(path, num_classes, classes=None):
    """Record the class count (and names) in an ONNX file's ``metadata_props``; the graph is unchanged.

    The keys are :data:`ssd300.onnx_runtime.NUM_CLASSES_KEY` and
    :data:`~ssd300.onnx_runtime.CLASS_NAMES_KEY`; other entries are kept.
    """
    import json

    import onnx

    from .onnx_runtime import CLASS_NAMES_KEY, NUM_CLASSES_KEY

    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    props.pop(CLASS_NAMES_KEY, None)
    props[NUM_CLASSES_KEY] = str(int(num_classes))
    if classes is not None:
        props[CLASS_NAMES_KEY] = json.dumps(list(classes), ensure_ascii=False)
    onnx.helper.set_model_props(model, props)
    onnx.save(model, path)


def _signature(detector):
    """The detector's input with a free batch size, named as its ``keras.Input``."""
    import keras

    (images,) = detector.inputs
    return [keras.InputSpec(shape=(None,) + tuple(images.shape[1:]), dtype=images.dtype,
                            name=images.name)]


def _replace(tmp, path):
    """Move the finished ``tmp`` (file or directory) onto ``path``."""
    if not os.path.isdir(tmp):
        os.replace(tmp, path)
        return
    # A directory cannot replace a non-empty one in one rename: move the old
    # one aside first, so ``path`` is always either the old or the new model.
    old = f"{tmp}.old"
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    _remove(old)


def _remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def _litert_interpreter(path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=path)


def run_exported(path, format, images):
    """Run an exported detector with its own runtime (no Keras).

    Args:
        path: what :func:`export_detector` wrote.
        format: its format.
        images: ``(batch, h, w, 3)`` array of the exported model's input dtype
            (``uint8`` RGB unless exported with ``preprocess=False``).

    Returns:
        dict of NumPy arrays ``boxes``, ``scores``, ``classes``,
        ``num_detections`` (see the module docstring).

    Raises:
        ExportError: ``path`` is missing or ``format`` unknown.
    """
    _check_format(format)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ExportError(f"{path}: no such exported model")
    images = np.asarray(images)
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        out = dict(zip(names, session.run(None, {session.get_inputs()[0].name: images})))
    elif format == "tf_saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(path)
        out = {k: v.numpy() for k, v in loaded.serve(tf.constant(images)).items()}
    else:
        runner = _litert_interpreter(path).get_signature_runner()
        (input_name,) = runner.get_input_details()
        out = runner(**{input_name: images})
    return {name: np.asarray(out[name]) for name in OUTPUT_NAMES}


def compare_detections(got, expected, atol=1e-4):
    """Where two detectors' outputs differ, in words; ``None`` when they agree.

    Per image: the same ``num_detections``, the same classes in the same
    order, boxes and scores within ``atol``; padding rows are ignored.

    Args:
        got, expected: dicts of ``boxes``, ``scores``, ``classes``,
            ``num_detections`` arrays.
        atol: tolerance on scores and normalised box coordinates.

    Returns:
        ``None``, or a message naming the first image that differs and how.
    """
    num_got = np.asarray(got["num_detections"])
    num_exp = np.asarray(expected["num_detections"])
    if num_got.shape != num_exp.shape:
        return f"{len(num_got)} images instead of {len(num_exp)}"
    for i, (n, m) in enumerate(zip(num_got, num_exp)):
        if n != m:
            return f"image {i}: {n} detections instead of {m}"
        if not np.array_equal(got["classes"][i, :n], expected["classes"][i, :n]):
            return f"image {i}: classes {got['classes'][i, :n]} instead of {expected['classes'][i, :n]}"
        for key in ("scores", "boxes"):
            diff = np.abs(np.asarray(got[key][i, :n], np.float64) - expected[key][i, :n])
            if diff.size and not diff.max() <= atol:
                return f"image {i}: {key} differ by up to {diff.max():.3g} (tolerance {atol})"
    return None


def check_export(path, format, images, reference, atol=1e-4):
    """Run an exported detector on ``images`` and compare it with the Keras detector.

    Args:
        path, format: what :func:`export_detector` wrote.
        images: ``(batch, h, w, 3)`` input batch (``uint8`` RGB for a model
            exported with preprocessing).
        reference: the Keras detector (``inference_model``'s model) or its
            outputs on ``images`` (a dict of arrays).
        atol: tolerance on scores and normalised box coordinates.

    Returns:
        dict ``images``, ``detections`` (rows compared), ``max_score_diff``,
        ``max_box_diff``.

    Raises:
        ExportCheckError: the detections differ (the message says where).
    """
    images = np.asarray(images)
    if not isinstance(reference, dict):
        reference = reference.predict_on_batch(images)
    expected = {k: np.asarray(reference[k]) for k in OUTPUT_NAMES}
    got = run_exported(path, format, images)
    problem = compare_detections(got, expected, atol)
    if problem:
        raise ExportCheckError(f"{path}: the exported {format} model differs from the Keras "
                               f"detector: {problem}")
    rows = [(i, int(n)) for i, n in enumerate(expected["num_detections"])]

    def max_diff(key):
        diffs = [np.abs(np.asarray(got[key][i, :n], np.float64) - expected[key][i, :n]).max()
                 for i, n in rows if n]
        return float(max(diffs)) if diffs else 0.0

    return {"images": len(images), "detections": sum(n for _, n in rows),
            "max_score_diff": max_diff("scores"), "max_box_diff": max_diff("boxes")}
