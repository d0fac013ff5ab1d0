"""SSD300 (Liu et al., 2016) on Keras 3, faithful to rykov8/ssd_keras and wikke/SSD_Keras.

The model, layers and loss use ``keras.ops`` and run on the TensorFlow, JAX
and PyTorch backends; box utilities and the data pipeline are NumPy/Pillow.
Names are loaded on first use, so the NumPy parts do not import Keras.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "SSD300": "ssd_v2",
    "SSD300v2": "ssd_v2",
    "Normalize": "ssd_layers",
    "PriorBox": "ssd_layers",
    "MultiboxLoss": "ssd_training",
    "BBoxUtility": "ssd_utils",
    "load_priors": "priors",
    "save_priors": "priors",
    "priors_from_model": "priors",
    "PriorFileError": "priors",
    "load_weights_by_name": "weights",
    "load_vgg16_weights": "weights",
    "WeightFileError": "weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ssd300' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
