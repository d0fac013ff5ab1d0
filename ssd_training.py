"""Train SSD300 on PASCAL VOC2007: ``python ssd_training.py --voc-root VOCdevkit/VOC2007``.

The same as ``ssd300 train``: ``python ssd_training.py --help`` lists the
options and the two recipes; ``python ssd_training.py --demo`` runs the whole
path on generated data. The original import path ``from ssd_training import
MultiboxLoss`` works too.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def __getattr__(name):
    # Lazily, so that running the script chooses TensorFlow's CPU kernels
    # before TensorFlow is imported (ssd300.speed).
    if name == "MultiboxLoss":
        from ssd300.ssd_training import MultiboxLoss

        return MultiboxLoss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    from ssd300.cli import train_main

    sys.exit(train_main())
