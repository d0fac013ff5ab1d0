"""Running an exported ONNX detector with onnxruntime: NumPy, Pillow and onnxruntime only, no Keras.

The ``.onnx`` file is what :func:`ssd300.export.export_detector` writes. Its
detections match :class:`ssd300.detect.Detector`'s (same resize, same
preprocessing, same decoding and NMS), as ``(K, 6)`` arrays of
``[label, score, xmin, ymin, xmax, ymax]`` in pixels of each image.

The class count comes from the file's ``metadata_props`` (``num_classes``,
the background included, and ``class_names``, a JSON list, when the export
had names; see :data:`NUM_CLASSES_KEY`). A file exported before
they were recorded gives its count from its graph (the width of the one
``Softmax``'s input, read with the ``onnx`` package when it is installed);
failing that the count is unknown, and every detected label is checked
against the class names instead.

Example::

    detector = OnnxDetector("ssd300.onnx")
    detections, sizes = detector.detect_files(["pics/fish-bike.jpg"])
"""

import json
import os

import numpy as np

from .errors import UserError
from .detect import PictureDetector
from .image_io import preprocess_input


class OnnxModelError(UserError):
    """An ONNX file that is missing, unreadable, or not an exported SSD detector."""


_OUTPUTS = ("boxes", "scores", "classes", "num_detections")

#: The ``metadata_props`` keys that :func:`ssd300.export.export_detector` writes
#: in an ONNX file: the class count with the background (``"5"``), and the
#: class names without it as a JSON list (only when the export had names).
NUM_CLASSES_KEY, CLASS_NAMES_KEY = "num_classes", "class_names"


class OnnxDetector(PictureDetector):
    """An exported ONNX detector applied to RGB images of any size.

    Pictures, files and VOC folders are read and scored as by
    :class:`ssd300.detect.Detector` (``detect_arrays``, ``detect_files``,
    ``evaluate_voc``, with their ``sizes``).

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers (the CPU by default).
        classes: the class names without the background (default: the
            names the file records, else ``None``).

    Attributes:
        num_classes: the model's class count, the background included;
            ``None`` when neither the metadata nor the graph tells.
        class_names: the names the file records (a tuple), else ``None``.
        classes: the names detections are labelled with (label ``i`` is
            ``classes[i - 1]``), else ``None``.

    Raises:
        OnnxModelError: the file is missing, not ONNX, lacks the detector's
            input and outputs, has broken class metadata, or ``classes``
            has another length than the model's class count.
    """

    def __init__(self, path, providers=("CPUExecutionProvider",), classes=None):
        import onnxruntime

        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise OnnxModelError(f"{self.path}: ONNX model not found")
        try:
            self.session = onnxruntime.InferenceSession(self.path, providers=list(providers))
        except Exception as e:  # onnxruntime raises its own exception types for a bad file
            raise OnnxModelError(f"{self.path}: not a readable ONNX model ({type(e).__name__}: "
                                 f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
        inputs = self.session.get_inputs()
        names = {o.name for o in self.session.get_outputs()}
        shape = inputs[0].shape if len(inputs) == 1 else None
        if (shape is None or len(shape) != 4 or shape[3] != 3
                or not all(isinstance(s, int) for s in shape[1:3]) or not names >= set(_OUTPUTS)):
            raise OnnxModelError(f"{self.path}: not an SSD detector exported by ssd300.export "
                                 f"(expects one input (batch, h, w, 3) and outputs {', '.join(_OUTPUTS)})")
        self.input_name = inputs[0].name
        self.input_size = (shape[1], shape[2])
        # A model exported without preprocessing takes Caffe-preprocessed float32.
        self.takes_uint8 = inputs[0].type == "tensor(uint8)"
        self.num_classes, self.class_names = _recorded_classes(
            self.path, self.session.get_modelmeta().custom_metadata_map)
        if self.num_classes is None:
            self.num_classes = num_classes_from_graph(self.path)
        self.classes = self.class_names
        if classes is not None:
            self.set_classes(classes)

    def set_classes(self, classes):
        """Label detections with ``classes`` (without the background).

        Raises:
            OnnxModelError: the model's class count is known and differs.
        """
        classes = tuple(classes)
        if self.num_classes is not None and len(classes) + 1 != self.num_classes:
            shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
            raise OnnxModelError(
                f"{self.path} detects {self.num_classes - 1} classes + background, but {len(classes)} "
                f"class names were given ({shown}); pass --classes FILE with {self.num_classes - 1} "
                f"names, in the order the model was trained with")
        self.classes = classes

    def run(self, batch):
        """The raw outputs for a ``(batch, h, w, 3)`` array at the model's input size.

        Returns:
            dict ``boxes`` ``(batch, K, 4)`` normalised ``xmin, ymin, xmax,
            ymax``, ``scores`` ``(batch, K)``, ``classes`` ``(batch, K)``,
            ``num_detections`` ``(batch,)``.
        """
        batch = np.asarray(batch)
        batch = batch.astype(np.uint8) if self.takes_uint8 else preprocess_input(batch)
        values = self.session.run(list(_OUTPUTS), {self.input_name: batch})
        return dict(zip(_OUTPUTS, values))

    def detect_batch(self, batch):
        """Detections for ``(B, h, w, 3)`` uint8 RGB at ``input_size``.

        Returns:
            a list of ``(K, 6)`` float64 ``[label, score, xmin, ymin, xmax,
            ymax]``, boxes normalised, by decreasing score, as
            ``Detector.detect_batch``.

        Raises:
            OnnxModelError: a label past ``classes`` (only possible when the
                model's class count is unknown).
        """
        out = self.run(batch)
        results = []
        for i in range(len(batch)):
            n = int(out["num_detections"][i])
            det = np.empty((n, 6))
            det[:, 0] = out["classes"][i, :n]
            det[:, 1] = out["scores"][i, :n]
            det[:, 2:] = out["boxes"][i, :n]
            results.append(det)
        self._check_labels(results)
        return results

    def _check_labels(self, detections):
        """Refuse a label past ``classes`` (possible only when the class count is unknown)."""
        if self.classes is None or not detections:
            return
        top = max((int(d[:, 0].max()) for d in detections if len(d)), default=0)
        if top > len(self.classes):
            raise OnnxModelError(
                f"{self.path} detected label {top}, but only {len(self.classes)} class names were given; "
                f"the model (which records no class count) has at least {top} classes: pass "
                f"--classes FILE with all its class names, in the order the model was trained with")


def _recorded_classes(path, metadata):
    """``(num_classes, class_names)`` from an ONNX file's metadata; ``(None, None)`` without them."""
    if NUM_CLASSES_KEY not in metadata:
        return None, None
    text = metadata[NUM_CLASSES_KEY]
    try:
        num_classes = int(text)
    except ValueError:
        num_classes = 0
    if num_classes < 2:
        raise OnnxModelError(f"{path}: metadata {NUM_CLASSES_KEY} must be an integer >= 2 (the background "
                             f"counted), got {text!r}")
    if CLASS_NAMES_KEY not in metadata:
        return num_classes, None
    try:
        names = json.loads(metadata[CLASS_NAMES_KEY])
    except ValueError:
        names = None
    if not (isinstance(names, list) and len(names) == num_classes - 1
            and all(isinstance(n, str) for n in names)):
        raise OnnxModelError(f"{path}: metadata {CLASS_NAMES_KEY} is not a JSON list of "
                             f"{num_classes - 1} names ({NUM_CLASSES_KEY} is {num_classes})")
    return num_classes, tuple(names)


def num_classes_from_graph(path):
    """The class count (background included) of an exported SSD read from its graph, else ``None``.

    SSD300 has one softmax, over the last axis of its class logits, which a
    ``Reshape`` to the constant shape ``(-1, num_priors, num_classes)``
    makes. Any other structure, or no ``onnx`` package, gives ``None``.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return None
    try:
        model = onnx.load(os.fspath(path))
    except Exception:  # noqa: BLE001 - onnx raises its own types; an unreadable graph tells nothing
        return None
    graph = model.graph
    softmax = [n for n in graph.node if n.op_type == "Softmax"]
    if len(softmax) != 1:
        return None
    axis = [a.i for a in softmax[0].attribute if a.name == "axis"]
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    # Before opset 13 Softmax's default axis is 1 (and flattens the rest): not the last axis.
    last_axis = axis[0] in (-1, 2) if axis else opset >= 13
    if not last_axis:
        return None
    producer = {out: n for n in graph.node for out in n.output}
    reshape = producer.get(softmax[0].input[0])
    if reshape is None or reshape.op_type != "Reshape" or len(reshape.input) < 2:
        return None
    constants = {t.name: t for t in graph.initializer}
    constants.update({n.output[0]: a.t for n in graph.node if n.op_type == "Constant"
                      for a in n.attribute if a.name == "value"})
    if reshape.input[1] not in constants:
        return None
    shape = numpy_helper.to_array(constants[reshape.input[1]])
    if shape.shape != (3,) or shape[-1] < 2:
        return None
    return int(shape[-1])
