"""rykov8/ssd_keras import path: ``from videotest import VideoTest`` (run from ``testing_utils/``,
as the original's example did) or ``from testing_utils.videotest import VideoTest``.

The class is :class:`ssd300.video.VideoTest`; see its docstring for what differs from the original.
"""

import os
import sys

# The original appended ".." to sys.path to reach the repository's modules;
# this finds the repository from this file instead of the working directory.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from ssd300.video import VideoTest  # noqa: E402, F401
