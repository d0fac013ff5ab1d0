"""Running an exported ONNX detector with onnxruntime: NumPy, Pillow and onnxruntime only, no Keras.

The ``.onnx`` file is what :func:`ssd300.export.export_detector` writes. Its
detections match :class:`ssd300.detect.Detector`'s (same resize, same
preprocessing, same decoding and NMS), as ``(K, 6)`` arrays of
``[label, score, xmin, ymin, xmax, ymax]`` in pixels of each image.

Example::

    detector = OnnxDetector("ssd300.onnx")
    detections, sizes = detector.detect_files(["pics/fish-bike.jpg"])
"""

import os

import numpy as np

from .errors import UserError
from .image_io import open_rgb, preprocess_input, resize


class OnnxModelError(UserError):
    """An ONNX file that is missing, unreadable, or not an exported SSD detector."""


_OUTPUTS = ("boxes", "scores", "classes", "num_detections")


class OnnxDetector:
    """An exported ONNX detector applied to RGB images of any size.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers (the CPU by default).

    Raises:
        OnnxModelError: the file is missing, not ONNX, or lacks the
            detector's input and outputs.
    """

    def __init__(self, path, providers=("CPUExecutionProvider",)):
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

    def detect_arrays(self, images):
        """Detections for RGB ``uint8`` arrays ``(H, W, 3)`` of any sizes.

        Returns:
            a list of ``(K, 6)`` float64 ``[label, score, xmin, ymin, xmax,
            ymax]`` in pixels of each image, by decreasing score, as
            ``Detector.detect_arrays``.
        """
        if not len(images):
            return []
        batch = np.stack([resize(np.asarray(im), self.input_size) for im in images])
        out = self.run(batch)
        results = []
        for i, image in enumerate(images):
            h, w = np.asarray(image).shape[:2]
            n = int(out["num_detections"][i])
            det = np.empty((n, 6))
            det[:, 0] = out["classes"][i, :n]
            det[:, 1] = out["scores"][i, :n]
            det[:, 2:] = out["boxes"][i, :n]
            det[:, 2:6] *= [w, h, w, h]
            results.append(det)
        return results

    def detect_files(self, paths, batch_size=8):
        """``(detections, sizes)`` for image files, read in batches; sizes are ``(width, height)``.

        Raises:
            ImageError: a file is missing or unreadable (names the file).
        """
        paths = [os.fspath(p) for p in paths]
        detections, sizes = [], []
        for start in range(0, len(paths), batch_size):
            images = [np.asarray(open_rgb(p)) for p in paths[start:start + batch_size]]
            detections.extend(self.detect_arrays(images))
            sizes.extend((im.shape[1], im.shape[0]) for im in images)
        return detections, sizes
