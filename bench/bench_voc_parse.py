"""Parsing 5011 VOC annotation files (the size of VOC2007 trainval).

Run: .venv/bin/python bench/bench_voc_parse.py
"""

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from ssd300.voc import VOC_CLASSES, XML_preprocessor  # noqa: E402


def main():
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        ann = Path(tmp) / "Annotations"
        ann.mkdir()
        for i in range(5011):
            objects = "".join(
                f"<object><name>{VOC_CLASSES[rng.integers(20)]}</name><pose>Left</pose><truncated>0"
                f"</truncated><difficult>{int(rng.random() < 0.2)}</difficult><bndbox><xmin>{x}</xmin>"
                f"<ymin>{y}</ymin><xmax>{x + 50}</xmax><ymax>{y + 40}</ymax></bndbox></object>"
                for x, y in rng.integers(1, 300, (rng.integers(1, 6), 2)))
            (ann / f"{i:06d}.xml").write_text(
                f"<annotation><folder>VOC2007</folder><filename>{i:06d}.jpg</filename><size><width>500"
                f"</width><height>375</height><depth>3</depth></size><segmented>0</segmented>{objects}"
                "</annotation>")
        t = time.perf_counter()
        prep = XML_preprocessor(ann, progress=False)
        print(f"parsed {len(prep.data)} annotation files in {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
