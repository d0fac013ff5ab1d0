"""The type predicates the argument checks share: what counts as an integer or a number here."""

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
