"""SSD300 (Liu et al., 2016) on Keras 3, faithful to rykov8/ssd_keras and wikke/SSD_Keras.

The model, layers and loss use ``keras.ops`` and run on the TensorFlow, JAX
and PyTorch backends; box utilities and the data pipeline are NumPy/Pillow.

The names below load on first use (PEP 562), so ``import ssd300.box_ops``
and the data workers do not import Keras. ``import ssd300`` still registers
the custom layers for ``keras.saving.load_model``: at once when Keras is
already imported, else as soon as it is.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# Public name -> module that defines it.
_EXPORTS = {
    "BBoxUtility": "ssd_utils",
    "CaffePreprocess": "inference",
    "DecodeDetections": "decode_detections",
    "Detector": "detect",
    "DilatedConv2D": "ssd_layers",
    "OnnxDetector": "onnx_runtime",
    "VideoTest": "video",
    "check_export": "export",
    "detect_video": "video",
    "export_detector": "export",
    "inference_model": "inference",
    "Generator": "generator",
    "MultiboxLoss": "ssd_training",
    "Normalize": "ssd_layers",
    "PriorBox": "ssd_layers",
    "PriorFileError": "priors",
    "SSD300": "ssd_v2",
    "SSD300v2": "ssd_v2",
    "SSDDataset": "generator",
    "TrainConfig": "training",
    "UserError": "errors",
    "VOC_CLASSES": "voc",
    "WeightFileError": "weights",
    "XML_preprocessor": "voc",
    "evaluate_detections": "evaluation",
    "fit": "training",
    "load_priors": "priors",
    "load_vgg16_weights": "weights",
    "load_weights_by_name": "weights",
    "priors_from_model": "priors",
    "save_priors": "priors",
}
# Modules whose import registers Keras serializable layers.
_LAYER_MODULES = ("ssd_layers", "decode_detections", "inference")

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


def _register_layers():
    for module in _LAYER_MODULES:
        importlib.import_module(f".{module}", __name__)


class _RegisterAfterKeras(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs :func:`_register_layers` right after ``keras`` is first imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        sys.meta_path.remove(self)  # one shot; the real finders locate keras
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None:
            return spec
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _register_layers()


if "keras" in sys.modules:
    _register_layers()
elif not any(isinstance(f, _RegisterAfterKeras) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterKeras())
