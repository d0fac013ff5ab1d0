"""SSD300 (Liu et al., 2016) on Keras 3, faithful to rykov8/ssd_keras and wikke/SSD_Keras.

The model, layers and loss use ``keras.ops`` and run on the TensorFlow, JAX
and PyTorch backends; box utilities and the data pipeline are NumPy/Pillow.
Importing the package registers the custom layers, so saved ``.keras``
models load with ``keras.saving.load_model`` after ``import ssd300``.
"""

__version__ = "0.1.0"

from .evaluation import evaluate_detections
from .generator import Generator, SSDDataset
from .priors import PriorFileError, load_priors, priors_from_model, save_priors
from .ssd_layers import Normalize, PriorBox
from .ssd_training import MultiboxLoss
from .ssd_utils import BBoxUtility
from .ssd_v2 import SSD300, SSD300v2
from .voc import VOC_CLASSES, XML_preprocessor
from .weights import WeightFileError, load_vgg16_weights, load_weights_by_name

__all__ = [
    "BBoxUtility", "Generator", "MultiboxLoss", "Normalize", "PriorBox", "PriorFileError",
    "SSD300", "SSD300v2", "SSDDataset", "VOC_CLASSES", "WeightFileError", "XML_preprocessor",
    "evaluate_detections", "load_priors", "load_vgg16_weights", "load_weights_by_name",
    "priors_from_model", "save_priors",
]
