"""Reading images with Pillow, the Caffe-style input, and Pillow's HSV conversions vectorised.

Images are read as RGB and turned upright by their EXIF orientation, as
torchvision's ``decode_jpeg(apply_exif_orientation=True)`` and Roboflow's
auto-orient do. Arrays are ``(H, W, 3)`` RGB unless said otherwise; the
augmentation works on channel planes ``(3, H, W)``.
"""

import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError

#: ImageNet channel means in BGR order, as keras.applications' "caffe" mode.
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)

#: The EXIF tag of the orientation, and the transpose that shows each
#: orientation upright (the table of ``PIL.ImageOps.exif_transpose``).
ORIENTATION_TAG = 0x0112
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: Orientations whose upright picture has width and height swapped.
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


class ImageError(UserError):
    """An image that is missing or cannot be decoded; the message names the file."""


def exif_orientation(img):
    """The EXIF orientation (1-8) of an opened ``PIL.Image``; 1 when it has none or a bad one."""
    try:
        orientation = img.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001  (a corrupt EXIF block must not stop training)
        return 1
    return orientation if orientation in ORIENTATION_TRANSPOSE else 1


def _check_size(img, path):
    # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; both
    # are refused here, with the file's name and how to allow it.
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.width * img.height > limit:
        raise ImageError(
            f"{path}: image too large ({img.width}x{img.height} = {img.width * img.height} pixels, "
            f"more than Pillow's limit of {limit}: a possible decompression bomb); set "
            f"PIL.Image.MAX_IMAGE_PIXELS higher to read it")


def _open_error(path, error):
    if isinstance(error, FileNotFoundError):
        return ImageError(f"{path}: image not found")
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageError(f"{path}: image too large, a possible decompression bomb ({error}); set "
                          f"PIL.Image.MAX_IMAGE_PIXELS higher to read it")
    return ImageError(f"{path}: not a readable image ({type(error).__name__}: {error})")


_READ_ERRORS = (FileNotFoundError, UnidentifiedImageError, OSError, SyntaxError, ValueError,
                Image.DecompressionBombError, Image.DecompressionBombWarning)


def read_header(path):
    """``((width, height), orientation)`` of an image file as stored, reading only its header.

    Raises:
        ImageError: the file is missing or not an image.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            return img.size, exif_orientation(img)
    except _READ_ERRORS as e:
        raise _open_error(path, e) from None


def follows_stored_size(stored_size, orientation, annotated_size):
    """Whether an annotation was made on the stored (not the upright) picture.

    True when the orientation swaps width and height and the annotation's
    ``(width, height)`` equals the stored size and not the upright one; such
    an image is used as stored so that its boxes stay right.
    """
    if orientation not in SWAPPING_ORIENTATIONS or annotated_size is None:
        return False
    stored = tuple(int(v) for v in stored_size)
    annotated = tuple(int(round(float(v))) for v in annotated_size)
    return annotated == stored and annotated != stored[::-1]


#: Pillow's modes of 16-bit (and 32-bit integer) grayscale pictures.
_WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def keys_used_as_stored(path_prefix, sizes):
    """The images to use as stored although their EXIF orientation says to turn them.

    An image whose orientation swaps width and height but whose annotation
    gives the stored ``(width, height)`` was annotated as stored (see
    :func:`ssd300.image_io.follows_stored_size`); its boxes fit the stored
    pixels. Reads only the image headers; warns once with their number.

    Args:
        path_prefix: prepended to a key to give the image path.
        sizes: ``{key: (width, height)}`` from the annotations
            (``XML_preprocessor.annotations[key].width / .height``).

    Returns:
        frozenset of keys.
    """
    found = []
    for key, size in sizes.items():
        try:
            stored, orientation = read_header(path_prefix + key)
        except ImageError:
            continue  # reported when the image is loaded
        if follows_stored_size(stored, orientation, size):
            found.append(key)
    if found:
        warnings.warn(f"{len(found)} images have EXIF orientation but their annotations match the "
                      f"stored size; using them as stored (first: {path_prefix + found[0]})",
                      stacklevel=3)
    return frozenset(found)


def gray16_to_8bit(values):
    """16-bit gray levels to 8 bits by the fixed scale ``round(value / 257)``.

    ``65535 / 257 = 255``, so the whole 16-bit range maps linearly onto the
    8-bit one and a level means the same brightness in every picture (no
    stretch by the picture's own maximum). Integers never fall on a half
    (257 is odd), so the rounding needs no tie rule; it equals OpenCV's
    ``convertScaleAbs(values, alpha=1 / 257)``. It differs by at most one
    level from taking the high byte (``value >> 8``, as ``cv2.imread``
    without ``IMREAD_ANYDEPTH`` and torchvision's ``convert_image_dtype``
    do).

    Args:
        values: integer array of levels in ``[0, 65535]``.

    Returns:
        uint8 array of the same shape.
    """
    wide = np.asarray(values, dtype=np.uint32)
    return ((wide + 128) // 257).astype(np.uint8)  # floor((v + 128) / 257) == round(v / 257)


def _wide_gray_to_8bit(img, path):
    """An ``L`` image of a 16-bit (``I;16*``) or 32-bit integer (``I``) gray ``PIL.Image``.

    ``I`` holds 16-bit data in practice (Pillow opens some 16-bit PNGs and
    TIFFs as ``I``), so it is scaled the same way when every value lies in
    ``[0, 65535]``; other values have no agreed 8-bit meaning and are refused.
    """
    values = np.asarray(img)
    if img.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageError(f"{path}: 32-bit integer image with values {values.min()} to {values.max()}; "
                         "only 16-bit values (0 to 65535) are read: convert it to 8 or 16 bits")
    return Image.fromarray(gray16_to_8bit(values))


#: Photo formats a folder's pictures are recognised by (``detect FOLDER``);
#: Pillow also claims ``.h5``, ``.ps``, ``.mpg`` and others that are not photos.
_PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                     ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".avif", ".jp2", ".qoi")


def picture_extensions():
    """The photo file extensions (``".jpg"``, lower case) that this Pillow can read."""
    Image.init()
    readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return frozenset(ext for ext in _PHOTO_EXTENSIONS if ext in readable)


def open_rgb(path, orient=True):
    """Open an image file as an RGB ``PIL.Image`` (decoded), upright.

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images become
    RGB. 16-bit gray levels map to 8 bits by a fixed scale,
    :func:`gray16_to_8bit`; a 32-bit integer (``I``) picture must hold
    16-bit values.

    Args:
        path: the image file.
        orient: apply the EXIF orientation (all 8, as
            ``PIL.ImageOps.exif_transpose``); ``False`` gives the picture as stored.

    Raises:
        ImageError: the file is missing, not an image, truncated, corrupt,
            larger than ``PIL.Image.MAX_IMAGE_PIXELS`` (a possible
            decompression bomb), or a 32-bit integer picture with values
            outside ``[0, 65535]``.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            _check_size(img, path)
            img.load()
            orientation = exif_orientation(img) if orient else 1
            if img.mode in _WIDE_GRAY_MODES:
                # Pillow's convert() would clip at 255; a fixed scale keeps brightness comparable.
                img = _wide_gray_to_8bit(img, path)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            if orientation != 1:
                rgb = rgb.transpose(ORIENTATION_TRANSPOSE[orientation])
            return rgb
    except ImageError:
        raise
    except _READ_ERRORS as e:
        raise _open_error(path, e) from None


def load_image(path, orient=True):
    """``(H, W, 3)`` uint8 RGB array of an image file; see :func:`open_rgb`."""
    return np.asarray(open_rgb(path, orient))


def as_pil(image):
    """A ``PIL.Image`` of an ``(H, W, 3)`` uint8 array (or the image itself)."""
    if isinstance(image, Image.Image):
        return image
    return Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))


def rgb_array(image, name="image"):
    """An ``(H, W, 3)`` uint8 RGB array of a picture given as an array or a ``PIL.Image``.

    Gray ``(H, W)`` and ``(H, W, 1)`` arrays are repeated into three
    channels and an RGBA array's alpha is dropped, as :func:`open_rgb` does
    for files; a ``PIL.Image`` is converted to RGB.

    Args:
        image: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``
            uint8 values 0-255, or a ``PIL.Image``.
        name: what to call it in an error (``"image 3"``).

    Raises:
        ValueError: another type, shape or dtype (float pictures are not
            guessed at: [0, 1] and [0, 255] scales both exist), or an empty picture.
    """
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    if isinstance(image, (str, bytes, os.PathLike)):
        raise ValueError(f"{name} is a path ({os.fspath(image)!r}), not pixels; read files with "
                         "detect_files or load_image")
    array = np.asarray(image)
    shape = array.shape
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or 0 in array.shape:
        raise ValueError(f"{name}: expected an (H, W, 3) RGB picture (or (H, W) gray, (H, W, 4) RGBA), "
                         f"got shape {shape}")
    if array.dtype != np.uint8:
        hint = " (for values in [0, 1]: (image * 255).round().astype(np.uint8))" if array.dtype.kind == "f" else ""
        raise ValueError(f"{name}: expected uint8 values 0-255, got {array.dtype}{hint}")
    if array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    return array[..., :3]


def resize_pil(img, size):
    """Resize a ``PIL.Image`` to ``size = (height, width)`` (bilinear); the pixels of :func:`resize`."""
    height, width = size
    if img.size == (width, height):
        return img
    # reducing_gap: a large downscale (a zoomed-out canvas) first shrinks by
    # an integer factor, which is much faster and as good to the eye.
    return img.resize((width, height), Image.BILINEAR, reducing_gap=3.0)


def resize(image, size):
    """Resize an ``(H, W, 3)`` uint8 array to ``size = (height, width)`` (bilinear)."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(resize_pil(as_pil(image), size))


def planes(img, dtype=np.float32):
    """``(3, H, W)`` channel planes of an RGB ``PIL.Image`` or ``(H, W, 3)`` array.

    One copy out of Pillow (``tobytes``, which holds the GIL), then NumPy
    de-interleaves without it: Pillow's ``split`` holds the GIL throughout,
    which costs worker threads more than the NumPy copy's extra time.
    """
    arr = img if isinstance(img, np.ndarray) else np.asarray(img)
    return np.array(arr.transpose(2, 0, 1), dtype=dtype, order="C")


def write_planes(rgb_planes, out, caffe=False):
    """Interleave ``(3, H, W)`` RGB planes into ``out``, a float32 ``(H, W, 3)`` array.

    Args:
        rgb_planes: ``(3, H, W)`` RGB values in ``[0, 255]`` (float32 or uint8).
        out: ``(H, W, 3)`` float32 array written in place.
        caffe: write :func:`preprocess_input` of the image (BGR, ImageNet mean
            subtracted) instead of the RGB values; the same float32 numbers.

    Returns:
        ``out``.
    """
    for c in range(3):
        if caffe:
            np.subtract(rgb_planes[2 - c], CAFFE_MEAN_BGR[c], out=out[..., c])
        else:
            out[..., c] = rgb_planes[c]
    return out


def preprocess_input(x):
    """Keras's ``preprocess_input`` in ``caffe`` mode, in NumPy.

    RGB to BGR, then the ImageNet mean subtracted per channel; no scaling.
    This is what the converted Caffe VGG16/SSD weights expect.

    Args:
        x: ``(..., H, W, 3)`` RGB values in ``[0, 255]``.

    Returns:
        float32 array of the same shape.
    """
    x = np.asarray(x, dtype=np.float32)
    return x[..., ::-1] - CAFFE_MEAN_BGR


# Pillow's conversions between RGB and HSV (Image.convert on 8-bit images),
# vectorised with the same arithmetic so that the bytes are the same
# (tests/test_image_io.py checks all 2**24 inputs both ways), 2-3x faster
# than Pillow's per-pixel C loops. What depends on one or two of the 8-bit
# inputs is a table, built by Pillow itself where it can be.
#
# RGB -> HSV: v is the largest value; s depends on the largest and the
# smallest only; h on which channel is the largest (red, then green, then
# blue on ties, as Pillow tests them) and how far the other two are below it.
# HSV -> RGB: Pillow takes the sector i = floor(6 h / 255), fs = s / 255 and
# f = 6 h / 255 - i (floats), and writes v, p = round(v (1 - fs)) and one of
# q = round(v (1 - fs f)) (odd sectors) or t = round(v (1 - fs (1 - f)))
# (even sectors) in the order of the sector.

_HSV_TABLES = {}


def _hsv_tables():
    if _HSV_TABLES:
        return _HSV_TABLES
    first, second = (a.ravel() for a in np.meshgrid(np.arange(256, dtype=np.uint8),
                                                     np.arange(256, dtype=np.uint8), indexing="ij"))
    # s of RGB (max, min, min): [max * 256 + min].
    grey = np.stack([first, np.minimum(first, second), np.minimum(first, second)], -1)[None]
    saturation = np.asarray(Image.fromarray(grey).convert("HSV"))[0, :, 1]
    # h of the largest channel at 255 and the others d1, d2 below it:
    # [case * 65536 + d1 * 256 + d2], case 0/1/2 for red/green/blue largest.
    top = np.full_like(first, 255)
    cases = np.stack([np.stack(c, -1) for c in ((top, 255 - first, 255 - second),
                                                 (255 - first, top, 255 - second),
                                                 (255 - first, 255 - second, top))])
    hue = np.asarray(Image.fromarray(cases).convert("HSV"))[..., 0].ravel()
    # p: Pillow's blue channel at hue 0, [s * 256 + v].
    hsv = np.stack([np.zeros_like(first), first, second], -1)[None]
    p = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))[0, :, 2]
    # The q-or-t factor of each (s, h), [s * 256 + h], with Pillow's float
    # and double steps.
    h6 = np.arange(256, dtype=np.float32).astype(np.float64) * 6.0 / 255.0
    sector = np.floor(h6)
    f = (h6 - sector).astype(np.float32)
    fs = (np.arange(256, dtype=np.float32).astype(np.float64) / 255.0).astype(np.float32)
    q = 1.0 - (fs[:, None] * f[None, :]).astype(np.float64)
    t = 1.0 - fs[:, None].astype(np.float64) * (1.0 - f[None, :].astype(np.float64))
    k = np.where(sector.astype(np.intp) % 2 == 1, q, t)
    _HSV_TABLES.update(saturation=saturation, hue=hue, p=p, k=k.ravel())
    return _HSV_TABLES


def _select(mask, a, b):
    """``a`` where ``mask`` (bool) else ``b``, for uint8 arrays that broadcast: bitwise,
    several times faster than ``np.where`` on an irregular mask."""
    chosen = np.bitwise_and(np.bitwise_xor(a, b), np.negative(mask.view(np.uint8)))  # 0xFF where True
    chosen ^= b
    return chosen


def rgb_to_hsv(rgb):
    """Pillow's RGB to HSV conversion of uint8 planes ``(3, ...)`` (R, G, B): uint8 HSV planes."""
    tables = _hsv_tables()
    flat = rgb.reshape(3, -1)
    r, g, b = flat
    out = np.empty(rgb.shape, np.uint8)
    h, s, v = out.reshape(3, -1)
    flat.max(axis=0, out=v)
    # Indices in 16 / 32 bits (np.take widens them once); mode="clip" (they
    # are in range) spares the copy that out= costs otherwise.
    index = v.astype(np.uint16)
    index <<= 8
    index |= flat.min(axis=0)
    np.take(tables["saturation"], index, out=s, mode="clip")
    # Distances below the largest value; the case is 0 when red is the
    # largest, 1 when green is (and red is not), 2 otherwise, and d1, d2 are
    # those of the other two channels in RGB order.
    dr, dg, db = np.subtract(v, flat)
    not_red = dr != 0
    blue = not_red & (dg != 0)
    index = np.add(not_red.view(np.uint8), blue.view(np.uint8)).astype(np.uint32)
    index <<= 8
    index |= _select(not_red, dr, dg)
    index <<= 8
    index |= _select(blue, dg, db)
    np.take(tables["hue"], index, out=h, mode="clip")
    return out


#: Where each channel (R, G, B) takes v and where p: ranges ``(start, count)``
#: of h, ``start <= h < start + count`` modulo 256. The sector floor(6 h / 255)
#: (h = 255 is sector 6, i.e. 0) decides which channel gets v, p and
#: q-or-t: R, G, B get v in sectors 5-0, 1-2, 3-4 and p in 2-3, 4-5, 0-1, and
#: the sectors start at h = 43, 85, 128, 170, 213.
_CHANNEL_RANGES = (((213, 86), (85, 85)), ((43, 85), (170, 85)), ((128, 85), (255, 86)))


def hsv_to_rgb(hsv):
    """Pillow's HSV to RGB conversion of uint8 planes ``(3, ...)`` (H, S, V): uint8 RGB planes."""
    tables = _hsv_tables()
    h, s, v = hsv.reshape(3, -1)
    row = s.astype(np.uint16)
    row <<= 8
    p = np.take(tables["p"], row | v, mode="clip")
    x = np.take(tables["k"], row | h, mode="clip")
    x *= v
    # C's round() of x >= 0: x + 0.5 is exact for these products (all 2**24
    # inputs are checked), so truncating it rounds halves up.
    x += 0.5
    qt = x.astype(np.uint8)
    p_or_qt = p ^ qt
    out = np.empty(hsv.shape, np.uint8)
    for c, ((v_at, v_count), (p_at, p_count)) in enumerate(_CHANNEL_RANGES):
        # qt, then p and v where the channel takes them (bitwise selects).
        channel = out[c].reshape(-1)
        np.bitwise_and(p_or_qt, np.negative((h - np.uint8(p_at) < p_count).view(np.uint8)), out=channel)
        channel ^= qt
        mask = np.negative((h - np.uint8(v_at) < v_count).view(np.uint8))
        channel ^= np.bitwise_and(channel ^ v, mask)
    return out
