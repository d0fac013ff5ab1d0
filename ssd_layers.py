"""rykov8/ssd_keras import path: ``from ssd_layers import Normalize, PriorBox``."""

from ssd300.ssd_layers import Normalize, PriorBox  # noqa: F401
