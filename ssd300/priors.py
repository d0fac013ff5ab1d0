"""Prior boxes: from a model, or from a ``.pkl`` file read safely.

A prior array is float ``(num_priors, 8)``: normalised
``xmin, ymin, xmax, ymax`` followed by the four variances.
"""

import io
import os
import pickle

import numpy as np

from .atomic import atomic_path
from .errors import UserError

# A pickle can run arbitrary code, so only what a pickled NumPy array needs
# is resolved; anything else is refused.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("codecs", "encode"),
}
# Protocol 5 (pickle.HIGHEST_PROTOCOL) stores an array as numpy's
# _frombuffer(bytes, dtype, shape, order[, axis_order]), under numpy 2's and
# numpy 1's module names. It is answered with the same steps in public NumPy
# (numpy.core.numeric would warn that it is deprecated).
_FROMBUFFER = {
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
}


def _array_from_buffer(buffer, dtype, shape, order, axis_order=None):
    """An array from a protocol-5 pickle: what numpy's ``_frombuffer`` does, in public NumPy."""
    array = np.frombuffer(buffer, dtype=dtype)
    if order == "K" and axis_order is not None:
        return array.reshape(shape, order="C").transpose(axis_order)
    return array.reshape(shape, order=order)


class PriorFileError(UserError):
    """A priors file that is missing, unsafe, or not an ``(N, 8)`` array."""


class _Refused(pickle.UnpicklingError):
    pass


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _FROMBUFFER:
            return _array_from_buffer
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise _Refused(
            f"refusing to load {module}.{name}: only a plain NumPy array is accepted")


def check_priors(priors, source="priors"):
    """Raise ``PriorFileError`` unless ``priors`` is a finite, real ``(N, 8)`` NumPy array (N >= 1).

    The columns are a normalised ``xmin, ymin, xmax, ymax`` box and its four
    variances. The array is not converted: callers keep its dtype.
    """
    if not isinstance(priors, np.ndarray):
        raise PriorFileError(
            f"{source}: expected a NumPy array of shape (N, 8), got {type(priors).__name__}")
    if priors.ndim != 2 or priors.shape[1] != 8 or priors.shape[0] == 0:
        raise PriorFileError(f"{source}: expected shape (N, 8), got {priors.shape}")
    if not np.issubdtype(priors.dtype, np.number) or np.issubdtype(priors.dtype, np.complexfloating):
        raise PriorFileError(f"{source}: expected a real numeric array, got dtype {priors.dtype}")
    if not np.all(np.isfinite(priors)):
        raise PriorFileError(f"{source}: contains NaN or infinite values")


def validate_priors(priors, source="priors"):
    """Return ``priors`` as a float32 ``(N, 8)`` array, or raise ``PriorFileError``.

    Values must be finite and within float32's range (:func:`check_priors`);
    both are checked before the cast, which would otherwise turn a large
    float64 into ``inf`` (with NumPy's overflow warning).
    """
    check_priors(priors, source)
    largest = np.abs(priors).max()
    if largest > np.finfo(np.float32).max:
        raise PriorFileError(f"{source}: contains values too large for float32 (up to {largest:g})")
    return priors.astype(np.float32)


def load_priors(path):
    """Load prior boxes from a pickle file (the originals' ``prior_boxes_ssd300.pkl``).

    Python 2 pickles of the originals load too, and arrays pickled with
    any protocol (``pickle.HIGHEST_PROTOCOL`` included). Only a plain
    numeric NumPy array is unpickled; anything else is refused without
    running its code.

    Args:
        path: the ``.pkl`` file.

    Returns:
        float32 array ``(num_priors, 8)``.

    Raises:
        PriorFileError: the file is missing, not a pickle, unsafe, or not an
            ``(N, 8)`` numeric array. The message names the file.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PriorFileError(f"{path}: cannot read priors file ({e.strerror})") from None
    try:
        priors = _ArrayOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _Refused as e:
        raise PriorFileError(f"{path}: {e}") from None
    except Exception as e:  # truncated or garbage input raises many types
        raise PriorFileError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
    return validate_priors(priors, path)


def save_priors(priors, path):
    """Write priors as a plain pickled float32 array, atomically.

    The file loads with the original notebook's
    ``pickle.load(open(path, "rb"))``.

    Args:
        priors: ``(N, 8)`` boxes and variances.
        path: the ``.pkl`` file; its folder must exist.

    Raises:
        PriorFileError: ``priors`` is not a finite ``(N, 8)`` array.
        UserError: ``path`` cannot be written (a folder, a missing or
            unwritable folder), naming it and the reason; no file is left.
    """
    priors = validate_priors(np.asarray(priors), "priors")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"{path}: cannot write the priors (it is a folder)")
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            pickle.dump(priors, f, protocol=2)
    except OSError as e:
        raise UserError(f"{path}: cannot write the priors ({e.strerror or e})") from None


def priors_from_model(model):
    """The prior boxes of a built SSD model, without running it.

    Reads the NumPy boxes held by the model's ``PriorBox`` layers (named
    ``<source>_mbox_priorbox``), in the order the model concatenates them.

    Returns:
        float32 array ``(num_priors, 8)``.

    Raises:
        TypeError: ``model`` is not a Keras model (a path, say).
        ValueError: the model lacks one of SSD300's PriorBox layers.
    """
    from .ssd_layers import PriorBox
    from .ssd_v2 import prior_layer_names

    if not hasattr(model, "get_layer"):
        raise TypeError(f"priors_from_model needs a Keras SSD model, got {type(model).__name__}"
                        f"{' (load a .pkl with load_priors)' if isinstance(model, (str, os.PathLike)) else ''}")
    parts = []
    for name in prior_layer_names():
        try:
            layer = model.get_layer(name)
        except ValueError:
            raise ValueError(f"model {model.name!r} has no PriorBox layer {name!r}") from None
        if not isinstance(layer, PriorBox):
            raise ValueError(f"{name} is a {type(layer).__name__}, not a PriorBox layer")
        parts.append(layer.prior_boxes)
    return np.concatenate(parts, axis=0).astype(np.float32)
