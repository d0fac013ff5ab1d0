"""A synthetic dataset in the PASCAL VOC layout, for demos and tests.

Pictures of coloured shapes (circles, squares, triangles, crosses) on
textured backgrounds, with exact boxes, written as ``JPEGImages/``,
``Annotations/`` (VOC XML), ``ImageSets/Main/{train,val,trainval,test}.txt``
and ``classes.txt``. The same seed gives the same dataset.
"""

import os
import shutil
import stat
import tempfile

import numpy as np
from PIL import Image, ImageDraw

from .atomic import missing_folders, remove_empty_folders
from .box_ops import pairwise_iou
from .errors import UserError

SHAPE_CLASSES = ("circle", "square", "triangle", "cross")
#: Colours of the "simple" style, one per class (RGB).
SIMPLE_COLOURS = {"circle": (220, 40, 40), "square": (40, 180, 60), "triangle": (40, 80, 220),
                  "cross": (230, 200, 30)}

_XML = """<annotation>
\t<folder>{folder}</folder>
\t<filename>{filename}</filename>
\t<source>
\t\t<database>ssd300 synthetic shapes</database>
\t</source>
\t<size>
\t\t<width>{width}</width>
\t\t<height>{height}</height>
\t\t<depth>3</depth>
\t</size>
\t<segmented>0</segmented>
{objects}</annotation>
"""
_OBJECT = """\t<object>
\t\t<name>{name}</name>
\t\t<pose>Unspecified</pose>
\t\t<truncated>0</truncated>
\t\t<difficult>0</difficult>
\t\t<bndbox>
\t\t\t<xmin>{xmin}</xmin>
\t\t\t<ymin>{ymin}</ymin>
\t\t\t<xmax>{xmax}</xmax>
\t\t\t<ymax>{ymax}</ymax>
\t\t</bndbox>
\t</object>
"""


def _background(rng, width, height, simple=False):
    base = rng.uniform(40, 215, 3) if not simple else np.full(3, rng.uniform(90, 170))
    gradient = rng.uniform(-60, 60, 3) if not simple else np.full(3, rng.uniform(-30, 30))
    t = np.linspace(0, 1, width)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, height)[:, None, None]
    img = base + gradient * t + rng.normal(0, 12, (height, width, 3))
    img = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 6 if not simple else 2)):  # clutter that is not an object
        xy = rng.uniform(0, 1, 4) * [width, height, width, height]
        draw.line(tuple(xy), fill=tuple(int(v) for v in rng.uniform(0, 255, 3)), width=int(rng.integers(1, 4)))
    return img


def _shape_mask(kind, width, height, box, rng):
    """An ``L`` mask with the shape drawn inside ``box = (x0, y0, x1, y1)``."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=255)
    elif kind == "square":
        draw.rectangle(box, fill=255)
    elif kind == "triangle":
        apex = x0 + rng.uniform(0.2, 0.8) * (x1 - x0)
        draw.polygon([(apex, y0), (x1, y1), (x0, y1)], fill=255)
    elif kind == "cross":
        tx, ty = (x1 - x0) / 3.0, (y1 - y0) / 3.0
        draw.rectangle((x0 + tx, y0, x1 - tx, y1), fill=255)
        draw.rectangle((x0, y0 + ty, x1, y1 - ty), fill=255)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return mask


def synthetic_image(rng, classes=SHAPE_CLASSES, size_range=(300, 500), max_objects=4, style="varied"):
    """One picture and its objects.

    ``style="varied"``: any colours on coloured, textured backgrounds, so the
    class is in the shape alone. ``"simple"``: one colour per class on gray
    backgrounds, larger shapes, at most 3; quick to learn (the demo's).

    Returns:
        ``(image, objects, colours)``: a ``PIL.Image``, a list of
        ``(class name, xmin, ymin, xmax, ymax)`` in VOC pixel coordinates
        (1-based, inclusive), the exact extent of each drawn shape, and the
        RGB colour of each shape.
    """
    if style not in ("varied", "simple"):
        raise ValueError(f"style must be 'varied' or 'simple', got {style!r}")
    simple = style == "simple"
    width, height = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
    img = _background(rng, width, height, simple)
    placed, objects, colours = [], [], []
    for _ in range(int(rng.integers(1, (min(max_objects, 3) if simple else max_objects) + 1))):
        for _attempt in range(20):
            side = rng.uniform(0.25, 0.6 if simple else 0.55) * min(width, height)
            aspect = rng.uniform(0.7, 1.4)
            w, h = side * np.sqrt(aspect), side / np.sqrt(aspect)
            x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
            box = np.array([x0, y0, x0 + w, y0 + h])
            if not placed or pairwise_iou(box[None], np.array(placed)).max() < 0.05:
                break
        else:
            continue
        kind = classes[int(rng.integers(len(classes)))]
        mask = _shape_mask(kind, width, height, tuple(box), rng)
        extent = mask.getbbox()
        if extent is None:
            continue
        if simple:
            colour = tuple(int(v) for v in np.clip(np.array(SIMPLE_COLOURS[kind]) + rng.integers(-20, 21, 3), 0, 255))
        else:
            colour = tuple(int(v) for v in rng.uniform(0, 255, 3))
        img.paste(Image.new("RGB", (width, height), colour), (0, 0), mask)
        placed.append(box)
        left, upper, right, lower = extent
        objects.append((kind, left + 1, upper + 1, right, lower))
        colours.append(colour)
    return img, objects, colours


def make_synthetic_voc(out_dir, images=500, seed=0, classes=SHAPE_CLASSES, size_range=(300, 500),
                       test_fraction=0.2, overwrite=False, style="varied"):
    """Write a synthetic VOC-format dataset.

    The folder is written in full beside ``out_dir`` and then moved into
    place, so an interrupted or failed run leaves no half dataset (nor the
    folders above ``out_dir`` that it created).

    Args:
        out_dir: the dataset folder to create (like ``VOCdevkit/VOC2007``).
        images: number of pictures.
        seed: makes the dataset reproducible.
        classes: shape classes to draw, a subset of ``SHAPE_CLASSES``.
        size_range: smallest and largest picture side in pixels.
        test_fraction: share of the pictures listed in ``test.txt``.
        style: ``"varied"`` or ``"simple"``, see :func:`synthetic_image`.
        overwrite: replace an existing ``out_dir``.

    Returns:
        ``out_dir``.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is not set.
        UserError: ``out_dir`` is a file, or cannot be written (a file
            where a folder above it should be, a missing or unwritable
            folder, a full disk), naming it and the reason.
        ValueError: unknown classes, or fewer than 2 images.
    """
    given = os.fspath(out_dir)
    out_dir = os.path.abspath(given)
    classes = tuple(classes)
    unknown = set(classes) - set(SHAPE_CLASSES)
    if unknown:
        raise ValueError(f"unknown shape classes {sorted(unknown)}; choose from {SHAPE_CLASSES}")
    if images < 2:
        raise ValueError("need at least 2 images (one for training, one for testing)")
    if os.path.lexists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass overwrite=True / --overwrite)")
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"{given}: cannot write the dataset (a file of that name exists; "
                        "overwrite replaces only a dataset folder)")
    parent = os.path.dirname(out_dir)
    made = missing_folders(parent)  # the folders above out_dir that this call creates
    folder = os.path.dirname(made[0]) if made else os.path.abspath(parent)
    if not os.path.isdir(folder):
        raise UserError(f"{given}: cannot write the dataset ({folder} is a file, not a folder)")
    work = None
    try:
        os.makedirs(parent, exist_ok=True)
        work = tempfile.mkdtemp(prefix=".synth-", dir=parent)
        for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
            os.makedirs(os.path.join(work, sub))
        # mkdtemp's folder is private (0700): give it the mode of any new folder (the umask's).
        os.chmod(work, stat.S_IMODE(os.stat(os.path.join(work, "JPEGImages")).st_mode))
        ids = [f"{i:06d}" for i in range(1, images + 1)]
        for i, image_id in enumerate(ids):
            rng = np.random.default_rng([seed, i])
            img, objects, _ = synthetic_image(rng, classes, size_range, style=style)
            img.save(os.path.join(work, "JPEGImages", f"{image_id}.jpg"), quality=92)
            xml = _XML.format(
                folder="synthetic", filename=f"{image_id}.jpg", width=img.width,
                height=img.height,
                objects="".join(_OBJECT.format(name=n, xmin=a, ymin=b, xmax=c, ymax=d)
                                for n, a, b, c, d in objects))
            with open(os.path.join(work, "Annotations", f"{image_id}.xml"), "w", encoding="utf8") as f:
                f.write(xml)
        order = np.random.default_rng(seed).permutation(images)
        num_test = min(images - 1, max(1, int(round(test_fraction * images))))
        test = sorted(ids[i] for i in order[:num_test])
        trainval = sorted(ids[i] for i in order[num_test:])
        val = trainval[::5]
        train = sorted(set(trainval) - set(val))
        for name, part in (("trainval", trainval), ("train", train), ("val", val), ("test", test)):
            with open(os.path.join(work, "ImageSets", "Main", f"{name}.txt"), "w") as f:
                f.write("".join(f"{i}\n" for i in part))
        with open(os.path.join(work, "classes.txt"), "w") as f:
            f.write("".join(f"{c}\n" for c in classes))
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
    except BaseException as e:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        remove_empty_folders(made)
        if isinstance(e, OSError):
            raise UserError(f"{given}: cannot write the dataset ({e.strerror or e})") from None
        raise
    return out_dir
