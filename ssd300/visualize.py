"""Drawing detections on pictures (Pillow), and loss curves (matplotlib)."""

import colorsys
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_path, writing
from .errors import UserError


def class_colour(label):
    """A distinct RGB colour per class label."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 1.0)
    return int(255 * r), int(255 * g), int(255 * b)


def draw_detections(image, detections, classes, min_score=0.0):
    """Draw boxes, class names and scores on a copy of an image.

    Args:
        image: ``PIL.Image`` or ``(H, W, 3)`` uint8 array.
        detections: ``(K, 6)`` ``[label, score, xmin, ymin, xmax, ymax]`` in
            pixels of this image.
        classes: class names; label ``i`` is ``classes[i - 1]``.
        min_score: leave out detections scored below this.

    Returns:
        an RGB ``PIL.Image``. A box's outline lies inside it (``xmax`` is the
        right edge of the last pixel column, so a box reaching the image's
        edge shows its whole outline there); the label sits above the box,
        or inside it at the image's top, and is moved left / up as far as
        needed to stay whole inside the image.
    """
    img = (Image.fromarray(np.asarray(image, dtype=np.uint8)) if not isinstance(image, Image.Image)
           else image).convert("RGB")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    width = max(2, round(min(img.size) / 200))
    img_w, img_h = img.size
    for label, score, x0, y0, x1, y1 in np.asarray(detections, dtype=np.float64).reshape(-1, 6):
        if score < min_score:
            continue
        label = int(label)
        colour = class_colour(label)
        name = classes[label - 1] if 0 < label <= len(classes) else str(label)
        # Pillow's rectangle includes its far corner: pixel x1 - 1 is the box's last column.
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=colour, width=width)
        text = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        label_w, label_h = right - left + 4, bottom - top + 4  # the filled box, 2 px margins
        ty = y0 - label_h if y0 - label_h >= 0 else y0
        # Whole inside the image (pixels 0 .. size - 1), the left / top edge winning if it is too small.
        lx = max(0, min(max(x0, 0), img_w - 1 - label_w))
        ty = max(0, min(max(ty, 0), img_h - 1 - label_h))
        draw.rectangle((lx, ty, lx + label_w, ty + label_h), fill=colour)
        draw.text((lx + 2, ty + 1), text, fill=(0, 0, 0), font=font)
    return img


def save_atomic(image, path):
    """Save a ``PIL.Image`` by writing a temporary file and renaming it.

    The format follows ``path``'s extension (``.png``, ``.jpg``, ...), as
    with ``Image.save``.

    Raises:
        UserError: ``path`` has no extension Pillow writes, or cannot be
            written (a full disk, no permission); its old content, if any,
            is kept.
    """
    extension = os.path.splitext(os.fspath(path))[1].lower()
    # Named here: the temporary file's name would hide the extension from Pillow.
    fmt = Image.registered_extensions().get(extension)
    if fmt is None or fmt not in Image.SAVE:
        raise UserError(f"{os.fspath(path)}: cannot tell which picture format to write from its extension "
                        f"({extension or 'none'}); use .png or .jpg")
    with writing(path), atomic_path(path) as tmp:
        image.save(tmp, format=fmt)


def plot_history(history, path, title="SSD300 training"):
    """Plot the loss curves of a ``{name: [values per epoch]}`` history to a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for name, values in history.items():
        if name.endswith("loss") and len(values):
            ax.plot(np.arange(1, len(values) + 1), values, marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("multibox loss")
    ax.set_yscale("log")  # the first epochs of a run from scratch dwarf the rest
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
