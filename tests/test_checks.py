"""The shared type predicates (ssd300.checks): NumPy scalars count, bools and strings do not."""

import math
import re

import numpy as np
import pytest

from ssd300.checks import check_non_negative, check_probability, image_size_hw, is_integer, is_number


@pytest.mark.parametrize("value, integer, number", [
    (3, True, True), (np.int64(3), True, True), (np.uint8(3), True, True),
    (3.0, False, True), (np.float32(0.5), False, True), (math.nan, False, True), (-math.inf, False, True),
    (True, False, False), (np.bool_(True), False, False), ("3", False, False), (None, False, False),
    (np.array(3), False, False), ([3], False, False), (3 + 0j, False, False),
])
def test_known_answers(value, integer, number):
    assert is_integer(value) is integer
    assert is_number(value) is number


def test_rules_name_the_argument_and_value():
    check_non_negative("alpha", 0)
    check_probability("p", np.float32(1.0))
    for value in (-1e-9, math.inf, math.nan, "1", True):
        with pytest.raises(ValueError, match=rf"^alpha must be a finite number >= 0, got {re.escape(repr(value))}$"):
            check_non_negative("alpha", value)
    for value in (1.01, -0.1, math.nan, None):
        with pytest.raises(ValueError, match=rf"^p must be a probability in \[0, 1\], got {re.escape(repr(value))}$"):
            check_probability("p", value)


def test_image_size_hw():
    assert image_size_hw((300, 200)) == (300, 200)
    assert image_size_hw([np.int64(64), 48, 3]) == (64, 48)
    assert image_size_hw(np.array([96, 96])) == (96, 96)
    for size in ((0, 300), (300,), (1, 2, 3, 4), (300.0, 300.0), "30", 300, None, (None, None, 3)):
        with pytest.raises(ValueError, match=r"^image_size must be \(height, width\), two positive integers, got "):
            image_size_hw(size)
