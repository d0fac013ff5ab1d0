"""Loading weights by layer name: Keras 2 HDF5 files of the originals,
this library's own Keras 3 weight files, and ImageNet VGG16."""

import os
import re
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
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        # layer_names or weight_names naming entries that are not there, or not arrays.
        raise WeightFileError(f"{path}: broken Keras weights file ({type(e).__name__}: {e})") from None
    if layers is None and keras3:
        raise WeightFileError(
            f"{path}: a Keras 3 .weights.h5 file, which does not record layer names; "
            "load it with model.load_weights() into the same architecture")
    if layers is None:
        raise WeightFileError(
            f"{path}: HDF5 file holds no Keras weights (no 'layer_names' attribute "
            "and no 'layers' group)")
    return layers


def _class_head_layouts():
    """``[(name, name pattern, priors per location)]`` of SSD300's six class heads.

    The heads are named ``<source>_mbox_conf`` (``pool6_mbox_conf_flat`` for
    the dense one) for 21 classes and get a ``_<num_classes>`` suffix for any
    other count, as in the originals; the kernel's last axis is ``priors per
    location * num_classes``.
    """
    from .ssd_layers import prior_box_aspect_ratios
    from .ssd_v2 import HEADS

    layouts = []
    for source, _, max_size, ratios in HEADS:
        base = "pool6_mbox_conf_flat" if source == "pool6" else f"{source}_mbox_conf"
        priors = len(prior_box_aspect_ratios(max_size, ratios, flip=True))
        layouts.append((base, re.compile(rf"{re.escape(base)}(?:_(\d+))?"), priors))
    return layouts


def _layers_and_name(path_or_layers, name):
    if isinstance(path_or_layers, (str, os.PathLike)):
        return read_weight_file(path_or_layers), name or os.fspath(path_or_layers)
    return path_or_layers, name or "weights"


def class_heads_in_file(path_or_layers, name=None):
    """SSD300's class heads in a weights file: ``{layer name: num_classes}``.

    ``num_classes`` (the background included) is read from the kernel's
    output width divided by the head's priors per location; a layer whose
    name suffix (``fc7_mbox_conf_5``) or width disagrees is an error.

    Args:
        path_or_layers: a weights file, or ``{layer name: [arrays]}`` from
            :func:`read_weight_file`.
        name: how to name the file in messages (default: its path).

    Raises:
        WeightFileError: the file is unreadable, or a class head's shape
            does not fit SSD300.
    """
    layers, name = _layers_and_name(path_or_layers, name)
    heads = {}
    for base, pattern, priors in _class_head_layouts():
        for layer, arrays in layers.items():
            match = pattern.fullmatch(layer)
            if not match or not arrays:
                continue
            width = int(np.shape(arrays[0])[-1]) if np.ndim(arrays[0]) else 0
            if width % priors or width // priors < 2:
                raise WeightFileError(f"{name}: class head {layer} has {width} outputs, not a "
                                      f"multiple of its {priors} priors per location times "
                                      "2 or more classes: not an SSD300 file")
            count = width // priors
            named = int(match.group(1)) if match.group(1) else 21
            if named != count:
                raise WeightFileError(f"{name}: class head {layer} holds {count} classes, but a "
                                      f"head of that name belongs to a {named}-class model")
            heads[layer] = count
    return heads


def num_classes_in_file(path_or_layers, name=None):
    """The class count (background included) of the SSD300 class heads in a weights file.

    Args:
        path_or_layers: a weights file, or ``{layer name: [arrays]}``.
        name: how to name the file in messages (default: its path).

    Returns:
        ``num_classes`` as the model counts it (e.g. 21 for PASCAL VOC), or
        ``None`` when the file has no class head (e.g. VGG16 base weights).

    Raises:
        WeightFileError: unreadable, or heads for different class counts.
    """
    layers, name = _layers_and_name(path_or_layers, name)
    counts = sorted(set(class_heads_in_file(layers, name).values()))
    if len(counts) > 1:
        raise WeightFileError(f"{name}: holds class heads for {' and '.join(map(str, counts))} "
                              "classes (with the background); expected one count")
    return counts[0] if counts else None


def check_class_count(path_or_layers, classes, name=None, num_classes_option=False):
    """Check that a file's class heads fit ``classes``, before detecting with it.

    A detector needs all six class heads for ``len(classes) + 1`` classes,
    under the names such a model gives them; :func:`load_weights_by_name`
    would otherwise leave them at random values and the model would draw
    random boxes. (Training from such a file, for transfer learning, wants
    exactly that: do not call this there.)

    Args:
        path_or_layers: a weights file, or ``{layer name: [arrays]}``.
        classes: the object class names (without the background).
        name: how to name the file in messages (default: its path).
        num_classes_option: also suggest ``--num-classes N`` (for a command
            that has that option).

    Returns:
        The file's ``num_classes`` (background included), ``len(classes) + 1``.

    Raises:
        WeightFileError: naming the file and what it holds: no SSD300 layer,
            no class heads, heads for another class count, or some heads
            missing.
    """
    layers, name = _layers_and_name(path_or_layers, name)
    wanted = len(classes) + 1
    heads = class_heads_in_file(layers, name)
    if not heads:
        held = [n for n, arrays in layers.items() if arrays]
        what = ("holds no SSD300 class heads (*_mbox_conf layers), so it cannot detect "
                "(base-network weights are for training)" if set(held) & _base_layer_names()
                else "holds no layer of SSD300")
        raise WeightFileError(f"{name}: {what}; layers in the file: {_preview(held, 8) or 'none'}")
    held = num_classes_in_file(layers, name)
    if held != wanted:
        raise WeightFileError(
            f"{name} holds class heads for {held - 1} classes + background, but {wanted - 1} "
            f"class names were given ({_preview(classes)}); pass --classes FILE with "
            f"{held - 1} names, in the order the model was trained with"
            + (f" (or --num-classes {held})" if num_classes_option else ""))
    expected = [base if wanted == 21 else f"{base}_{wanted}" for base, _, _ in _class_head_layouts()]
    missing = [n for n in expected if n not in heads]
    if missing:
        raise WeightFileError(f"{name}: lacks the class heads {', '.join(missing)} of a "
                              f"{wanted}-class model (it has {', '.join(sorted(heads))})")
    return held


def _base_layer_names():
    """SSD300's layers with weights other than the class heads."""
    from .ssd_v2 import HEADS, vgg16_conv_names

    extra = ["fc6", "fc7", "conv6_1", "conv6_2", "conv7_1", "conv7_2", "conv8_1", "conv8_2",
             "conv4_3_norm", "pool6_mbox_loc_flat"]
    return set(vgg16_conv_names() + extra + [f"{s}_mbox_loc" for s, *_ in HEADS])


def _preview(names, limit=5):
    names = [str(n) for n in names]
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


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
