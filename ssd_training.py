"""Train SSD300 on PASCAL VOC2007: ``python ssd_training.py --voc-root VOCdevkit/VOC2007``.

The same as ``ssd300 train``: ``python ssd_training.py --help`` lists the
options and the two recipes; ``python ssd_training.py --demo`` runs the whole
path on generated data. The original import path ``from ssd_training import
MultiboxLoss`` works too.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ssd300.ssd_training import MultiboxLoss  # noqa: E402,F401

if __name__ == "__main__":
    from ssd300.cli import train_main

    sys.exit(train_main())
