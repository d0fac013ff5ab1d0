"""The argument rules several modules share: what counts as an integer, a number, a size.

Each raises ``ValueError`` naming the argument and the value it got.
"""

import math
import numbers


def is_integer(value):
    """Python's or NumPy's integers; not ``bool`` (``True`` is 1 to Python, never a count here).

    Example:
        >>> is_integer(np.int64(3)), is_integer(3.0), is_integer(True)
        (True, False, False)
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value):
    """Integers and floats, Python's or NumPy's, NaN and the infinities included; not ``bool``.

    Example:
        >>> is_number(np.float32(0.5)), is_number(float("nan")), is_number("1"), is_number(False)
        (True, True, False, False)
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_non_negative(name, value):
    """Raise unless ``value`` is a finite number >= 0 (a negative or NaN one is no setting at all)."""
    if not is_number(value) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_unit_interval(name, value, kind=""):
    """Raise unless ``value`` is a number in ``[0, 1]`` (an IoU threshold; NaN is not)."""
    if not is_number(value) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be {kind}in [0, 1], got {value!r}")


def check_probability(name, value):
    """Raise unless ``value`` is a probability, a number in ``[0, 1]``."""
    check_unit_interval(name, value, "a probability ")


def image_size_hw(image_size):
    """``(height, width)`` of an ``image_size``, checked: two positive integers.

    Args:
        image_size: ``(height, width)`` or ``(height, width, channels)``
            (a model's input shape), any sequence.

    Returns:
        ``(height, width)``, Python ints.

    Example:
        >>> image_size_hw((300, 300, 3))
        (300, 300)
    """
    try:
        size = () if isinstance(image_size, (str, bytes)) else tuple(image_size)
    except TypeError:  # a number, None
        size = ()
    if len(size) not in (2, 3) or not all(is_integer(v) and v > 0 for v in size[:2]):
        raise ValueError(f"image_size must be (height, width), two positive integers, got {image_size!r}")
    return int(size[0]), int(size[1])
