"""Data augmentation for SSD training, in NumPy and Pillow.

Every transform takes an image and a box array and returns new ones, so the
boxes always follow the pixels. Boxes are rows ``(N, 4 + k)``: normalised
``xmin, ymin, xmax, ymax`` (fractions of the current image's width and
height) followed by ``k`` columns (the one-hot classes) that are carried
along unchanged. Random draws come from an explicit ``numpy.random.Generator``.

Two policies:

* :class:`OriginalAugmentation`: the originals' ``Generator`` (colour jitter in
  random order, PCA lighting noise, flips, random-sized crop).
* :class:`PaperAugmentation`: the SSD paper's (photometric distortions,
  zoom-out "expand", min-IoU random crop, horizontal flip).

Speed (bench/bench_pipeline.py): the policies draw their random numbers in
the originals' order, then crop, resize and flip with Pillow on 8-bit pixels,
run the colour arithmetic on contiguous channel planes ``(3, H, W)`` (NumPy
is slow on the 3-value inner axis of an ``(H, W, 3)`` array), 8-bit where the
steps are 8-bit, and write the result, or directly the network input
(``caffe=True``), into a slot of the batch. Of the paper's zoom-out canvas
only the lines that cross the image are resized (:func:`resize_on_fill`).
The pixels are those of the step-by-step computation on
``(H, W, 3)`` arrays: the paper's policy gives the same bytes, the original's
differs only by the order of float32 sums (luma mean, colour covariance),
well under 0.1 of a level (tests/test_augment.py).
"""

import math

import numpy as np
from PIL import Image

from .box_ops import pairwise_iou
from .checks import check_non_negative, check_probability, image_size_hw, is_integer, is_number
from .image_io import as_pil, hsv_to_rgb, planes, resize_pil, rgb_to_hsv, write_planes

GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
#: Fill colour of the zoom-out canvas: the ImageNet mean, RGB.
MEAN_RGB = (123.68, 116.779, 103.939)


# Photometric transforms on float32 RGB images in [0, 255]. ``axis`` is the
# channel axis: -1 for an ``(H, W, 3)`` image, 0 for planes ``(3, H, W)``.
# ``out`` may be the input (in place).

def _per_pixel(values, axis):
    """``(H, W)`` values broadcast over the channels."""
    return values[None] if axis == 0 else values[..., None]


def grayscale(rgb, axis=-1):
    """Luma of an RGB image: ``(H, W)``."""
    if axis == 0:
        return (GRAY_WEIGHTS @ rgb.reshape(3, -1)).reshape(rgb.shape[1:])
    return rgb @ GRAY_WEIGHTS


def _mean_gray(rgb, axis):
    if axis == 0:
        # The mean of the luma from the channel means: one contiguous pass.
        return GRAY_WEIGHTS @ rgb.reshape(3, -1).mean(axis=1, dtype=np.float32)
    return grayscale(rgb).mean()


def adjust_saturation(rgb, alpha, axis=-1, out=None):
    """Blend with the grayscale image: ``alpha * rgb + (1 - alpha) * gray``, clipped to [0, 255]."""
    # Not as one 3 x 3 colour matrix (twice as fast on planes): its rows
    # would round differently and make a gray picture slightly coloured,
    # which flips the sign of the lighting noise's principal component.
    gray = np.float32(1 - alpha) * grayscale(rgb, axis)
    out = np.multiply(rgb, np.float32(alpha), out=out)
    out += _per_pixel(gray, axis)
    return np.clip(out, 0, 255, out=out)


def adjust_brightness(rgb, alpha, out=None):
    """Scale all values by ``alpha``, clipped to [0, 255]."""
    out = np.multiply(rgb, np.float32(alpha), out=out)
    return np.clip(out, 0, 255, out=out)


def adjust_contrast(rgb, alpha, axis=-1, out=None):
    """Blend with the mean gray level: ``alpha * rgb + (1 - alpha) * mean``, clipped to [0, 255]."""
    shift = np.float32((1 - alpha) * _mean_gray(rgb, axis))
    out = np.multiply(rgb, np.float32(alpha), out=out)
    out += shift
    return np.clip(out, 0, 255, out=out)


def _channel_sums(rgb, axis):
    """``(sums (3,), Gram matrix (3, 3))`` of the pixels, in float64, and their count."""
    if axis == 0:
        flat = rgb.reshape(3, -1)
        # Six dot products of contiguous rows; BLAS's 3 x N by N x 3 product
        # is 10x slower than this.
        gram = np.empty((3, 3))
        for i in range(3):
            for j in range(i, 3):
                gram[i, j] = gram[j, i] = np.dot(flat[i], flat[j])
        return flat.sum(axis=1, dtype=np.float32).astype(np.float64), gram, flat.shape[1]
    flat = rgb.reshape(-1, 3)
    n = len(flat)
    sums = (np.ones(n, np.float32) @ flat).astype(np.float64)
    return sums, (flat.T @ flat).astype(np.float64), n


def lighting_noise(rgb, noise, axis=-1, out=None):
    """AlexNet-style PCA lighting: shift colours along the image's principal components.

    Args:
        rgb: float32 image.
        noise: ``(3,)`` weights of the principal components (``randn * std``).
    """
    sums, gram, n = _channel_sums(rgb, axis)
    # np.cov(rgb / 255) from the sums and the Gram matrix (float32 products,
    # float64 from there): several times faster than np.cov's float64
    # copies, within 1e-4 relative.
    mean = sums / n
    cov = (gram - n * np.outer(mean, mean)) / ((n - 1) * 255.0 ** 2)
    eigval, eigvec = np.linalg.eigh(cov)
    shift = (eigvec.dot(eigval * noise) * 255).astype(np.float32)
    if axis == 0:
        shift = shift.reshape((3,) + (1,) * (rgb.ndim - 1))
    out = np.add(rgb, shift, out=out)
    return np.clip(out, 0, 255, out=out)


def float_table(*steps):
    """The 256 float32 values ``0 .. 255`` passed through ``steps`` (functions of an array).

    The photometric steps that act on each value alone are computed once per
    image on this table and looked up, which gives the same float32 numbers
    as applying them to every pixel.
    """
    table = np.arange(256, dtype=np.float32)
    for step in steps:
        table = step(table)
    return table


# Geometric transforms.

def flip_boxes(boxes, flip_h, flip_v):
    """The boxes of the image mirrored left-right and / or top-bottom."""
    if flip_h or flip_v:
        boxes = boxes.copy()
    # Column slices (0, 2), (2, 0), ... rather than index lists: views, no copies.
    if flip_h:
        boxes[:, 0:3:2] = 1 - boxes[:, 2::-2]
    if flip_v:
        boxes[:, 1:4:2] = 1 - boxes[:, 3:0:-2]
    return boxes


def flip(img, flip_h, flip_v):
    """A ``PIL.Image`` mirrored left-right and / or top-bottom."""
    if flip_h:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if flip_v:
        img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return img


def horizontal_flip(image, boxes):
    """Mirror an ``(H, W, ...)`` array left-right."""
    return image[:, ::-1], flip_boxes(boxes, True, False)


def vertical_flip(image, boxes):
    """Mirror an ``(H, W, ...)`` array top-bottom."""
    return image[::-1], flip_boxes(boxes, False, True)


def centres_inside(boxes, rects):
    """Which box centres lie strictly inside which rectangles: the crops' rule for keeping a box.

    Args:
        boxes: ``(N, >=4)`` normalised boxes.
        rects: ``(M, 4)`` normalised rectangles ``xmin, ymin, xmax, ymax``.

    Returns:
        ``(N, M)`` bool.
    """
    cx = (0.5 * (boxes[:, 0] + boxes[:, 2]))[:, None]
    cy = (0.5 * (boxes[:, 1] + boxes[:, 3]))[:, None]
    rects = np.asarray(rects, dtype=np.float64)
    return (rects[:, 0] < cx) & (cx < rects[:, 2]) & (rects[:, 1] < cy) & (cy < rects[:, 3])


def crop_rect(x, y, w, h, img_w, img_h):
    """The pixel rectangle ``[x, x + w) x [y, y + h)`` of an ``img_w x img_h`` image, normalised."""
    return [x / img_w, y / img_h, (x + w) / img_w, (y + h) / img_h]


def crop_boxes(boxes, x, y, w, h, img_w, img_h):
    """The boxes of a crop ``[x, x + w) x [y, y + h)`` of an ``img_w x img_h`` image.

    Keeps exactly the boxes whose centre lies strictly inside the rectangle
    (:func:`centres_inside`), clipped to it and renormalised to the crop.
    """
    kept = boxes[centres_inside(boxes, [crop_rect(x, y, w, h, img_w, img_h)])[:, 0]]
    x_rel, y_rel, w_rel, h_rel = x / img_w, y / img_h, w / img_w, h / img_h
    kept[:, 0:3:2] = np.clip((kept[:, 0:3:2] - x_rel) / w_rel, 0, 1)
    kept[:, 1:4:2] = np.clip((kept[:, 1:4:2] - y_rel) / h_rel, 0, 1)
    return kept


def crop(image, boxes, x, y, w, h):
    """Cut the pixel rectangle ``[x, x + w) x [y, y + h)`` out of the image; see :func:`crop_boxes`."""
    img_h, img_w = image.shape[:2]
    return image[y:y + h, x:x + w], crop_boxes(boxes, x, y, w, h, img_w, img_h)


def expand_boxes(boxes, img_w, img_h, new_w, new_h, left, top):
    """Boxes of an ``img_w x img_h`` image placed at ``(left, top)`` on a ``new_w x new_h`` canvas."""
    boxes = boxes.copy()
    boxes[:, 0:3:2] = (boxes[:, 0:3:2] * img_w + left) / new_w
    boxes[:, 1:4:2] = (boxes[:, 1:4:2] * img_h + top) / new_h
    return boxes


def canvas_window(image, left, top, window, fill=MEAN_RGB):
    """Pixels of ``window = (x, y, w, h)`` of a canvas filled with ``fill`` that has
    ``image`` at ``(left, top)``, without building the whole canvas.

    Args:
        image: ``(H, W, 3)`` uint8 array or RGB ``PIL.Image``.

    Returns:
        the same kind as ``image``.
    """
    x, y, w, h = window
    img = as_pil(image)
    img_w, img_h = img.size
    if (x - left, y - top, w, h) == (0, 0, img_w, img_h):
        return image
    # Pillow fills and pastes in C, several times faster than NumPy broadcasting.
    canvas = Image.new("RGB", (w, h), tuple(int(round(v)) for v in fill))
    x0, x1 = max(x, left), min(x + w, left + img_w)
    y0, y1 = max(y, top), min(y + h, top + img_h)
    if x0 < x1 and y0 < y1:
        part = img.crop((x0 - left, y0 - top, x1 - left, y1 - top))
        canvas.paste(part, (x0 - x, y0 - y))
    return canvas if isinstance(image, Image.Image) else np.asarray(canvas)


def _influenced(in_size, box_size, out_size, first, last):
    """Output pixels ``[start, stop)`` of Pillow's bilinear resize along one axis
    (``in_size`` pixels, the box ``[0, box_size)``, ``out_size`` pixels out) that
    include all those whose taps reach the input pixels ``[first, last)``.

    Pillow's output pixel ``i`` has its centre at ``(i + 0.5) * scale`` (the box
    in float32) and its taps within ``support = max(scale, 1)`` of it, the ends
    rounded; two more pixels on each side cover the rounding.
    """
    scale = float(np.float32(box_size)) / out_size
    support = max(scale, 1.0)
    start = max(0, math.floor((first + 0.5 - support) / scale - 0.5) - 2)
    stop = min(out_size, math.ceil((last - 0.5 + support) / scale - 0.5) + 2)
    return (start, stop) if start < stop else (0, 0)


def _probe_pass_order():
    """How this Pillow orders the two passes of a resize: ``"rows"`` (rows first,
    always: Pillow < 13), ``"shrink"`` (columns first when the height shrinks by
    more than twice as many pixels as the width: Pillow 13), or ``None`` (neither:
    :func:`resize_on_fill` then resizes the whole canvas).

    Found once, by resizing a small random picture in one call and in two.
    """
    rng = np.random.default_rng(0)
    found = []
    for in_size, out_size in (((24, 96), (20, 30)), ((96, 24), (30, 20))):  # (width, height)
        img = Image.fromarray(rng.integers(0, 256, in_size[::-1] + (3,), dtype=np.uint8))
        whole = img.resize(out_size, Image.BILINEAR).tobytes()
        rows = img.resize((out_size[0], in_size[1]), Image.BILINEAR).resize(out_size, Image.BILINEAR)
        columns = img.resize((in_size[0], out_size[1]), Image.BILINEAR).resize(out_size, Image.BILINEAR)
        found.append("rows" if rows.tobytes() == whole else "columns" if columns.tobytes() == whole else None)
    return {("rows", "rows"): "rows", ("columns", "rows"): "shrink"}.get(tuple(found))


_PASS_ORDER = []


def _columns_first(in_size, out_size):
    """Whether Pillow resizes ``in_size`` to ``out_size`` (``(width, height)``) columns
    first; ``None`` when its order is unknown."""
    if not _PASS_ORDER:
        _PASS_ORDER.append(_probe_pass_order())
    order = _PASS_ORDER[0]
    if order is None:
        return None
    shrink_w, shrink_h = in_size[0] - out_size[0], in_size[1] - out_size[1]
    return order == "shrink" and shrink_h > 0 and shrink_h > 2 * shrink_w


def resize_on_fill(part, left, top, canvas_size, box_size, size, fill):
    """Pillow's bilinear resize of a canvas filled with ``fill`` that holds ``part`` at
    ``(left, top)``, the same bytes, for about the cost of resizing ``part`` alone.

    Pillow resizes in two passes (rows, then columns; or the other way round
    when the height shrinks much more, from Pillow 13 on) through an 8-bit
    image, and a pixel whose taps see only fill comes out as the fill (the
    fixed-point taps sum to one within far less than a level). So the first
    pass runs on the lines of the canvas that cross ``part`` (at the canvas's
    full length, for the same taps) and the second on the lines those reach;
    everything else is fill. Each pass is one Pillow call that resizes one
    axis only.

    Args:
        part: RGB ``PIL.Image``.
        left, top: where ``part`` lies on the canvas, in pixels.
        canvas_size: ``(width, height)`` of the canvas.
        box_size: ``(width, height)`` of the region ``[0, width) x [0, height)``
            of the canvas that is resized (Pillow's ``box``; may be fractional).
        size: output ``(height, width)``.
        fill: the canvas colour, RGB integers.

    Returns:
        ``PIL.Image`` of ``size``.
    """
    out_h, out_w = size
    (canvas_w, canvas_h), (box_w, box_h) = canvas_size, box_size
    columns_first = _columns_first(canvas_size, (out_w, out_h))
    if columns_first is None:
        canvas = Image.new("RGB", canvas_size, fill)
        canvas.paste(part, (left, top))
        return canvas.resize((out_w, out_h), Image.BILINEAR, box=(0, 0, box_w, box_h))
    out = Image.new("RGB", (out_w, out_h), fill)
    if columns_first:
        # The columns through part, whole height: columns pass only.
        lines = Image.new("RGB", (part.width, canvas_h), fill)
        lines.paste(part, (0, top))
        lines = lines.resize((part.width, out_h), Image.BILINEAR, box=(0, 0, part.width, box_h))
        y0, y1 = _influenced(canvas_h, box_h, out_h, top, top + part.height)
        if y0 == y1:
            return out
        # The output rows they reach, whole width: rows pass only.
        lines = lines.crop((0, y0, part.width, y1))
        second = Image.new("RGB", (canvas_w, y1 - y0), fill)
        second.paste(lines, (left, 0))
        out.paste(second.resize((out_w, y1 - y0), Image.BILINEAR, box=(0, 0, box_w, y1 - y0)), (0, y0))
    else:
        lines = Image.new("RGB", (canvas_w, part.height), fill)
        lines.paste(part, (left, 0))
        lines = lines.resize((out_w, part.height), Image.BILINEAR, box=(0, 0, box_w, part.height))
        x0, x1 = _influenced(canvas_w, box_w, out_w, left, left + part.width)
        if x0 == x1:
            return out
        lines = lines.crop((x0, 0, x1, part.height))
        second = Image.new("RGB", (x1 - x0, canvas_h), fill)
        second.paste(lines, (0, top))
        out.paste(second.resize((x1 - x0, out_h), Image.BILINEAR, box=(0, 0, x1 - x0, box_h)), (x0, 0))
    return out


def resized_canvas_window(image, left, top, window, size, fill=MEAN_RGB):
    """``resize_pil(canvas_window(image, left, top, window, fill), size)``, the same bytes.

    Only the image's part of the window is resized (:func:`resize_on_fill`).
    When the window is 6 or more times the output size, Pillow first shrinks
    it by whole blocks (``Image.reduce``, as ``reducing_gap=3`` asks), which
    maps a block of fill to the fill colour; so only the blocks that hold
    the image are built and shrunk.

    Args:
        image: RGB ``PIL.Image``.
        left, top: where the image lies on the canvas, in pixels.
        window: ``(x, y, w, h)`` of the canvas to resize.
        size: output ``(height, width)``.
        fill: the canvas colour, RGB.

    Returns:
        ``PIL.Image`` of ``size``.
    """
    x, y, w, h = window
    out_h, out_w = size
    img_w, img_h = image.size
    fill = tuple(int(round(v)) for v in fill)
    # The image's part of the window, in window pixels.
    x0, x1 = max(x, left) - x, min(x + w, left + img_w) - x
    y0, y1 = max(y, top) - y, min(y + h, top + img_h) - y
    if x0 >= x1 or y0 >= y1:
        return Image.new("RGB", (out_w, out_h), fill)
    if (x0, y0, x1, y1) == (0, 0, w, h):  # no fill in the window
        if (w, h) != (img_w, img_h):
            image = image.crop((x - left, y - top, x - left + w, y - top + h))
        return resize_pil(image, size)
    # Image.resize's block factors for reducing_gap=3 (see resize_pil).
    fx, fy = int(w / out_w / 3.0) or 1, int(h / out_h / 3.0) or 1
    if fx == fy == 1:
        part = image.crop((x + x0 - left, y + y0 - top, x + x1 - left, y + y1 - top))
        return resize_on_fill(part, x0, y0, (w, h), (w, h), size, fill)
    bx0, by0, bx1, by1 = x0 // fx, y0 // fy, -(-x1 // fx), -(-y1 // fy)  # blocks holding the image
    part = canvas_window(image, left, top, (x + bx0 * fx, y + by0 * fy, min(bx1 * fx, w) - bx0 * fx,
                                            min(by1 * fy, h) - by0 * fy), fill)
    return resize_on_fill(part.reduce((fx, fy)), bx0, by0, (-(-w // fx), -(-h // fy)),
                          (w / fx, h / fy), size, fill)


def expand(image, boxes, ratio, left, top, fill=MEAN_RGB):
    """Zoom out: place the image at ``(left, top)`` on a canvas ``ratio`` times larger."""
    img_h, img_w = image.shape[:2]
    new_w, new_h = int(img_w * ratio), int(img_h * ratio)
    canvas = canvas_window(image, left, top, (0, 0, new_w, new_h), fill)
    return canvas, expand_boxes(boxes, img_w, img_h, new_w, new_h, left, top)


def _uniform_around_one(rng, var):
    return 2 * rng.random() * var + 1 - var


def _result(rgb_planes, out, caffe):
    if out is None:
        out = np.empty(rgb_planes.shape[1:] + (3,), np.float32)
    return write_planes(rgb_planes, out, caffe)


class Augmentation:
    """Base of the policies: ``policy(image, boxes, rng)`` gives ``(image, boxes)``.

    ``__call__(image, boxes, rng, out=None, caffe=False)``:

    Args:
        image: ``(H, W, 3)`` uint8 RGB array or RGB ``PIL.Image``, full resolution.
        boxes: ``(N, 4 + k)`` normalised boxes.
        rng: ``numpy.random.Generator``.
        out: float32 ``(*image_size, 3)`` to write the image into (a slot of
            a batch), or ``None`` for a new array.
        caffe: write ``preprocess_input`` of the image (BGR, mean subtracted),
            the same float32 numbers as calling it on the RGB result.

    Returns:
        ``(image, boxes)``: float32 ``(*image_size, 3)`` RGB in ``[0, 255]``
        (or the Caffe input), and the boxes that remain.
    """


def _check_range(name, value, upper=math.inf):
    """Raise unless ``value`` is ``(low, high)``, finite, with ``0 < low <= high <= upper``."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else ()
    if (len(pair) != 2 or not all(is_number(v) for v in pair)
            or not 0 < pair[0] <= pair[1] <= upper or pair[1] == math.inf):
        bound = "" if upper == math.inf else f" <= {upper:g}"
        raise ValueError(f"{name} must be (low, high) with 0 < low <= high{bound}, got {value!r}")


class OriginalAugmentation(Augmentation):
    """The originals' training augmentation (wikke/SSD_Keras ``Generator``).

    In order: random-sized crop (on the full image), resize, saturation /
    brightness / contrast jitter in random order, PCA lighting noise,
    horizontal and vertical flips. A variance or probability of 0 turns
    that step off. Brightness draws with ``brightness_var`` (the original
    used ``saturation_var``).

    Args:
        image_size: output ``(height, width)``.
        saturation_var, brightness_var, contrast_var: factors are drawn
            uniformly from ``[1 - var, 1 + var]``.
        lighting_std: standard deviation of the PCA lighting weights.
        hflip_prob, vflip_prob: flip probabilities.
        do_crop: apply the random-sized crop.
        crop_area_range: fraction of the image area to keep.
        aspect_ratio_range: aspect ratio of the crop.
    """

    def __init__(self, image_size=(300, 300), saturation_var=0.5, brightness_var=0.5,
                 contrast_var=0.5, lighting_std=0.5, hflip_prob=0.5, vflip_prob=0.5,
                 do_crop=True, crop_area_range=(0.75, 1.0), aspect_ratio_range=(3. / 4., 4. / 3.)):
        # A NaN, negative or reversed setting failed deep inside a batch, or drew nonsense.
        for name, value in (("saturation_var", saturation_var), ("brightness_var", brightness_var),
                            ("contrast_var", contrast_var), ("lighting_std", lighting_std)):
            check_non_negative(name, value)
        check_probability("hflip_prob", hflip_prob)
        check_probability("vflip_prob", vflip_prob)
        _check_range("crop_area_range", crop_area_range, upper=1.0)
        _check_range("aspect_ratio_range", aspect_ratio_range)
        self.image_size = image_size_hw(image_size)
        self.saturation_var = saturation_var
        self.brightness_var = brightness_var
        self.contrast_var = contrast_var
        self.lighting_std = lighting_std
        self.hflip_prob = hflip_prob
        self.vflip_prob = vflip_prob
        self.do_crop = do_crop
        self.crop_area_range = tuple(crop_area_range)
        self.aspect_ratio_range = tuple(aspect_ratio_range)

    def crop_window(self, img_w, img_h, rng):
        """The original's random-sized crop rectangle ``(x, y, w, h)`` in pixels."""
        lo, hi = self.crop_area_range
        target_area = (rng.random() * (hi - lo) + lo) * img_w * img_h
        lo, hi = self.aspect_ratio_range
        ratio = rng.random() * (hi - lo) + lo
        w = np.round(np.sqrt(target_area * ratio))
        h = np.round(np.sqrt(target_area / ratio))
        if rng.random() < 0.5:
            w, h = h, w
        w = int(max(1, min(w, img_w)))
        h = int(max(1, min(h, img_h)))
        x = int(rng.random() * (img_w - w))
        y = int(rng.random() * (img_h - h))
        return x, y, w, h

    def draw_photometric(self, rng):
        """The colour draws, in the original's order.

        Returns:
            ``(jitters, noise)``: ``[(step, factor), ...]`` in the order applied
            (``step`` is ``adjust_saturation``, ``adjust_brightness`` or
            ``adjust_contrast``), and the ``(3,)`` lighting weights or ``None``.
        """
        steps = [(step, var) for step, var in ((adjust_saturation, self.saturation_var),
                                               (adjust_brightness, self.brightness_var),
                                               (adjust_contrast, self.contrast_var)) if var]
        jitters = [(steps[i][0], _uniform_around_one(rng, steps[i][1]))
                   for i in rng.permutation(len(steps))]
        noise = rng.standard_normal(3) * self.lighting_std if self.lighting_std else None
        return jitters, noise

    def __call__(self, image, boxes, rng, out=None, caffe=False):
        """Augment one image; see :class:`Augmentation`."""
        img = as_pil(image)
        if self.do_crop:
            img_w, img_h = img.size
            x, y, w, h = self.crop_window(img_w, img_h, rng)
            boxes = crop_boxes(boxes, x, y, w, h, img_w, img_h)
            if (w, h) != (img_w, img_h):
                img = img.crop((x, y, x + w, y + h))
        jitters, noise = self.draw_photometric(rng)
        flip_h = self.hflip_prob > 0 and rng.random() < self.hflip_prob
        flip_v = self.vflip_prob > 0 and rng.random() < self.vflip_prob
        # The colour steps act on each pixel or on sums over all pixels, so
        # they commute with the flips, which are cheaper on 8-bit pixels.
        rgb = planes(flip(resize_pil(img, self.image_size), flip_h, flip_v))
        for step, factor in jitters:
            if step is adjust_brightness:
                step(rgb, factor, out=rgb)
            else:
                step(rgb, factor, axis=0, out=rgb)
        if noise is not None:
            lighting_noise(rgb, noise, axis=0, out=rgb)
        return _result(rgb, out, caffe), flip_boxes(boxes, flip_h, flip_v)


class PaperAugmentation(Augmentation):
    """The SSD paper's augmentation (Liu et al., section 2.2 and its Caffe code).

    Zoom-out ("expand") with probability ``expand_prob`` onto a canvas up to
    ``max_expand`` times larger filled with the mean colour; a random crop
    from the min-IoU sampler (whole image, or a patch of 0.3-1 of each side,
    aspect ratio 0.5-2, overlapping some object by at least 0.1, 0.3, 0.5,
    0.7 or 0.9, or any patch), keeping the boxes whose centres are inside;
    resize; photometric distortions (brightness, contrast, saturation, hue,
    each with probability 0.5, contrast first or last at random); horizontal
    flip.

    Args:
        image_size: output ``(height, width)``.
        expand_prob, max_expand: zoom-out probability and largest ratio.
        hflip_prob: flip probability.
        photometric: apply the photometric distortions.
        max_trials: crops the sampler tries before keeping the whole image.
    """

    MIN_IOUS = (None, 0.1, 0.3, 0.5, 0.7, 0.9, -np.inf)

    def __init__(self, image_size=(300, 300), expand_prob=0.5, max_expand=4.0, hflip_prob=0.5,
                 photometric=True, max_trials=50):
        check_probability("expand_prob", expand_prob)
        check_probability("hflip_prob", hflip_prob)
        if not is_number(max_expand) or not 1 <= max_expand < math.inf:  # NaN turned zoom-out off
            raise ValueError(f"max_expand must be a finite number >= 1, got {max_expand!r}")
        if not is_integer(max_trials) or max_trials < 1:
            raise ValueError(f"max_trials must be a positive integer, got {max_trials!r}")
        self.image_size = image_size_hw(image_size)
        self.expand_prob = expand_prob
        self.max_expand = max_expand
        self.hflip_prob = hflip_prob
        self.photometric = photometric
        self.max_trials = max_trials

    def sample_crop(self, img_w, img_h, boxes, rng):
        """A crop rectangle ``(x, y, w, h)`` from the min-IoU sampler, or ``None``.

        The trials are drawn one after the other as in the Caffe sampler (a
        size, and a position when the aspect ratio is allowed) and the first
        that overlaps some box by ``min_iou`` and holds some box centre is
        taken; the overlaps of all trials are computed at once, and the
        generator is left exactly where the sequential loop would leave it.
        """
        if len(boxes) == 0:
            return None
        min_iou = self.MIN_IOUS[rng.integers(len(self.MIN_IOUS))]
        if min_iou is None:
            return None
        state = rng.bit_generator.state
        u = rng.random(4 * self.max_trials)
        # rng.uniform(low, high) is low + (high - low) * rng.random(). A trial
        # starting at draw p takes w, h from draws p, p + 1, and when the
        # aspect ratio is allowed x, y from p + 2, p + 3.
        w_at = 0.3 * img_w + (img_w - 0.3 * img_w) * u[:-1]
        h_at = 0.3 * img_h + (img_h - 0.3 * img_h) * u[1:]
        allowed = ((0.5 <= h_at / w_at) & (h_at / w_at <= 2.0)).tolist()
        starts, pos = [], 0
        for _ in range(self.max_trials):
            if allowed[pos]:
                starts.append(pos)
                pos += 4
            else:
                pos += 2
        chosen = None
        if starts:
            at = np.array(starts)
            w, h = w_at[at], h_at[at]
            x = ((img_w - w) * u[at + 2]).astype(np.int64)
            y = ((img_h - h) * u[at + 3]).astype(np.int64)
            w = np.maximum(1, w.astype(np.int64))
            h = np.maximum(1, h.astype(np.int64))
            rects = np.stack([x / img_w, y / img_h, (x + w) / img_w, (y + h) / img_h], axis=1)
            # "not max < min_iou": a NaN overlap passes, as in the sequential test.
            ok = ~(pairwise_iou(boxes[:, :4], rects).max(axis=0) < min_iou)
            ok &= centres_inside(boxes, rects).any(axis=0)
            hits = np.flatnonzero(ok)
            if len(hits):
                chosen = int(hits[0])
                pos = starts[chosen] + 4
        rng.bit_generator.state = state
        rng.random(pos)
        if chosen is None:
            return None
        return int(x[chosen]), int(y[chosen]), int(w[chosen]), int(h[chosen])

    @staticmethod
    def draw_photometric(rng):
        """The draws of the photometric distortions, in the Caffe code's order.

        Returns:
            ``(delta, contrast_first, contrast, saturation, hue)``; a step that
            is not applied is ``None``.
        """
        delta = rng.uniform(-32, 32) if rng.random() < 0.5 else None
        contrast_first = rng.random() < 0.5
        contrast = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
        saturation = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
        hue = rng.uniform(-18, 18) if rng.random() < 0.5 else None
        return delta, contrast_first, contrast, saturation, hue

    @staticmethod
    def photometric_distortions(img, params):
        """Brightness, contrast, saturation and hue of a uint8 RGB ``PIL.Image``.

        Args:
            img: the image.
            params: :meth:`draw_photometric`'s result.

        Returns:
            ``(3, H, W)`` planes of the distorted image: float32 in ``[0, 255]``,
            or uint8 when the last step is the HSV one (whose result is 8-bit).
        """
        delta, contrast_first, contrast, saturation, hue = params

        def brighten(x):  # in place on float32
            x += np.float32(delta)
            return np.clip(x, 0, 255, out=x)

        def contrast_step(x):
            x *= np.float32(contrast)
            return np.clip(x, 0, 255, out=x)

        if saturation is None and hue is None:
            out = planes(img)
            if delta is not None:
                brighten(out)
            if contrast is not None:
                contrast_step(out)
            return out
        # Before the HSV step every value is transformed on its own and
        # truncated to 8 bits, and so are H and S in it: tables of the 256
        # values. rgb_to_hsv and hsv_to_rgb give Pillow's bytes, faster.
        before = [brighten] if delta is not None else []
        if contrast is not None and contrast_first:
            before.append(contrast_step)
        # Lookups with mode="clip" (the values are in range): no copy for out=.
        rgb = planes(img, np.uint8)
        if before:
            np.take(float_table(*before).astype(np.uint8), rgb, out=rgb, mode="clip")
        hsv = rgb_to_hsv(rgb)
        if hue is not None:
            table = float_table(lambda h: (h + hue * 255.0 / 360.0) % 256).astype(np.uint8)
            np.take(table, hsv[0], out=hsv[0], mode="clip")
        if saturation is not None:
            table = float_table(lambda s: np.clip(s * saturation, 0, 255)).astype(np.uint8)
            np.take(table, hsv[1], out=hsv[1], mode="clip")
        rgb = hsv_to_rgb(hsv)
        if contrast is not None and not contrast_first:
            return contrast_step(rgb.astype(np.float32))
        return rgb

    def __call__(self, image, boxes, rng, out=None, caffe=False):
        """Augment one image; see :class:`Augmentation`."""
        img = as_pil(image)
        img_w, img_h = img.size
        canvas_w, canvas_h, left, top = img_w, img_h, 0, 0
        if self.max_expand > 1 and rng.random() < self.expand_prob:
            ratio = rng.uniform(1, self.max_expand)
            left = int(rng.uniform(0, img_w * ratio - img_w))
            top = int(rng.uniform(0, img_h * ratio - img_h))
            canvas_w, canvas_h = int(img_w * ratio), int(img_h * ratio)
            boxes = expand_boxes(boxes, img_w, img_h, canvas_w, canvas_h, left, top)
        window = self.sample_crop(canvas_w, canvas_h, boxes, rng)
        if window is None:
            window = (0, 0, canvas_w, canvas_h)
        else:
            boxes = crop_boxes(boxes, *window, canvas_w, canvas_h)
        # Only the cropped part of the zoomed-out canvas is built.
        img = resized_canvas_window(img, left, top, window, self.image_size)
        params = self.draw_photometric(rng) if self.photometric else None
        flip_h = self.hflip_prob > 0 and rng.random() < self.hflip_prob
        # The distortions act on each pixel alone: flipping first is exact.
        img = flip(img, flip_h, False)
        rgb = planes(img, np.uint8) if params is None else self.photometric_distortions(img, params)
        return _result(rgb, out, caffe), flip_boxes(boxes, flip_h, False)
