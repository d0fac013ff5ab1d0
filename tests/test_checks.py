"""The shared type predicates (ssd300.checks): NumPy scalars count, bools and strings do not."""

import math

import numpy as np
import pytest

from ssd300.checks import is_integer, is_number


@pytest.mark.parametrize("value, integer, number", [
    (3, True, True), (np.int64(3), True, True), (np.uint8(3), True, True),
    (3.0, False, True), (np.float32(0.5), False, True), (math.nan, False, True), (-math.inf, False, True),
    (True, False, False), (np.bool_(True), False, False), ("3", False, False), (None, False, False),
    (np.array(3), False, False), ([3], False, False), (3 + 0j, False, False),
])
def test_known_answers(value, integer, number):
    assert is_integer(value) is integer
    assert is_number(value) is number
