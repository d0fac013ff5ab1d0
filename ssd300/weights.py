"""Loading weights by layer name: Keras 2 HDF5 files of the originals,
this library's own Keras 3 weight files, and ImageNet VGG16."""

import os
from dataclasses import dataclass, field

import numpy as np

from .atomic import atomic_path
from .errors import UserError


class WeightFileError(UserError):
    """A weights file that is missing or not in a layout we can read."""


@dataclass
class WeightLoadReport:
    """What :func:`load_weights_by_name` did.

    Attributes:
        loaded: layer names whose weights were set.
        skipped: ``{layer name: reason}`` for layers present in both the file
            and the model but not loaded (e.g. a shape mismatch).
        missing: model layers with weights that the file does not have (for
            another class count these include the class heads).
        unused: layers in the file that the model does not have.
    """

    loaded: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)
    unused: list = field(default_factory=list)

    def __str__(self):
        lines = [f"loaded {len(self.loaded)} layers"]
        for name, why in self.skipped.items():
            lines.append(f"  skipped {name}: {why}")
        if self.missing:
            lines.append(f"  left at their initial values (not in the file): {', '.join(self.missing)}")
        if self.unused:
            lines.append(f"  in the file but not in the model: {', '.join(self.unused)}")
        return "\n".join(lines)


def _decode(names):
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names]


def _keras2_layers(h5):
    """``{layer name: [arrays]}`` from a Keras 2 HDF5 file (weights or whole model)."""
    root = h5["model_weights"] if "model_weights" in h5 else h5
    if "layer_names" not in root.attrs:
        return None
    layers = {}
    for name in _decode(root.attrs["layer_names"]):
        group = root[name]
        weight_names = _decode(group.attrs.get("weight_names", []))
        layers[name] = [np.asarray(group[w]) for w in weight_names]
    return layers


def read_weight_file(path):
    """Read a weights file into ``{layer name: [arrays]}``.

    Accepts the Keras 2 HDF5 layout (``save_weights`` or a whole saved
    model), which is also what :func:`save_weights_by_name` writes. Keras 3
    ``.weights.h5`` files name their groups by layer type, not layer name:
    load those with ``model.load_weights``.

    Raises:
        WeightFileError: the file is missing or not a readable weights file.
    """
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightFileError(f"{path}: weights file not found")
    try:
        with h5py.File(path, "r") as h5:
            layers = _keras2_layers(h5)
            keras3 = "layers" in h5 and "vars" in h5
    except OSError as e:
        raise WeightFileError(f"{path}: not a readable HDF5 weights file ({e})") from None
    if layers is None and keras3:
        raise WeightFileError(
            f"{path}: a Keras 3 .weights.h5 file, which does not record layer names; "
            "load it with model.load_weights() into the same architecture")
    if layers is None:
        raise WeightFileError(
            f"{path}: HDF5 file holds no Keras weights (no 'layer_names' attribute "
            "and no 'layers' group)")
    return layers


def load_weights_by_name(model, path_or_layers, verbose=False):
    """Set the model's weights from a file, matching layers by name.

    Layers whose names the file lacks keep their values; that is how the
    class heads of a model with another class count (named
    ``*_mbox_conf_{num_classes}``) are left out. A layer whose weight shapes
    differ from the file's is skipped and reported.

    Args:
        model: a Keras model.
        path_or_layers: a weights file path, or ``{layer name: [arrays]}``.
        verbose: print the report.

    Returns:
        :class:`WeightLoadReport`.
    """
    file_layers = (read_weight_file(path_or_layers)
                   if isinstance(path_or_layers, (str, os.PathLike)) else path_or_layers)
    report = WeightLoadReport()
    model_names = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        model_names.add(layer.name)
        arrays = file_layers.get(layer.name)
        if not arrays:
            report.missing.append(layer.name)
            continue
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(a.shape) for a in arrays]
        if expected != got:
            report.skipped[layer.name] = f"shapes differ: model {expected}, file {got}"
            continue
        layer.set_weights(arrays)
        report.loaded.append(layer.name)
    report.unused = [n for n, arrays in file_layers.items() if arrays and n not in model_names]
    if verbose:
        print(report)
    return report


def save_weights_by_name(model, path):
    """Write the model's weights in the Keras 2 HDF5 layout, atomically.

    Layers are keyed by name, so the file loads into any model that shares
    layer names (:func:`load_weights_by_name`), as the originals' files do.
    """
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        names = [layer.name for layer in model.layers]
        f.attrs["layer_names"] = [n.encode("utf8") for n in names]
        f.attrs["backend"] = b"keras3"
        for layer in model.layers:
            group = f.create_group(layer.name)
            weight_names = [f"{layer.name}/{i}_{w.name}".encode("utf8")
                            for i, w in enumerate(layer.weights)]
            group.attrs["weight_names"] = weight_names
            for wn, value in zip(weight_names, layer.get_weights()):
                group.create_dataset(wn.decode("utf8"), data=value)


def vgg16_layer_map():
    """``{keras.applications VGG16 layer: SSD layer}``: ``block{b}_conv{i}`` to ``conv{b}_{i}``."""
    from .ssd_v2 import vgg16_conv_names

    # conv{b}_{i} is keras.applications' block{b}_conv{i}.
    return {"block{}_conv{}".format(*name[4:].split("_")): name for name in vgg16_conv_names()}


def load_vgg16_weights(model, weights="imagenet"):
    """Initialise ``conv1_1`` ... ``conv5_3`` from ``keras.applications.VGG16``.

    Args:
        model: an SSD300 model.
        weights: ``"imagenet"`` (downloaded by Keras on first use), a path to
            VGG16 weights, or ``None`` (random; used by the tests).

    Returns:
        :class:`WeightLoadReport`.

    Raises:
        WeightFileError: the ImageNet weights cannot be downloaded.
    """
    import keras

    try:
        vgg = keras.applications.VGG16(include_top=False, weights=weights,
                                       input_shape=(None, None, 3))
    except Exception as e:  # download failures surface as many types
        raise WeightFileError(
            "could not get the ImageNet VGG16 weights from keras.applications "
            f"({type(e).__name__}: {e}). Download them on a machine with internet access "
            "(they are cached in ~/.keras/models) or pass --weights FILE.") from None
    mapping = vgg16_layer_map()
    arrays = {mapping[l.name]: l.get_weights() for l in vgg.layers if l.name in mapping}
    report = load_weights_by_name(model, arrays)
    report.missing = [n for n in report.missing if n in mapping.values()]
    return report
