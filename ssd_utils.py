"""rykov8/ssd_keras import path: ``from ssd_utils import BBoxUtility``."""

from ssd300.ssd_utils import BBoxUtility  # noqa: F401
