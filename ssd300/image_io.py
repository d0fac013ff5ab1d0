"""Reading images with Pillow, and the Caffe-style input preprocessing.

Images are read as RGB and turned upright by their EXIF orientation, as
torchvision's ``decode_jpeg(apply_exif_orientation=True)`` and Roboflow's
auto-orient do. Arrays are ``(H, W, 3)`` RGB unless said otherwise; the
augmentation works on channel planes ``(3, H, W)``.
"""

import os

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


def open_rgb(path, orient=True):
    """Open an image file as an RGB ``PIL.Image`` (decoded), upright.

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images become RGB.

    Args:
        path: the image file.
        orient: apply the EXIF orientation (all 8, as
            ``PIL.ImageOps.exif_transpose``); ``False`` gives the picture as stored.

    Raises:
        ImageError: the file is missing, not an image, truncated, corrupt, or
            larger than ``PIL.Image.MAX_IMAGE_PIXELS`` (a possible
            decompression bomb).
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            _check_size(img, path)
            img.load()
            orientation = exif_orientation(img) if orient else 1
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16/32-bit grayscale: scale to 8 bits instead of clipping.
                arr = np.asarray(img, dtype=np.float64)
                top = arr.max() if arr.size and arr.max() > 0 else 1.0
                img = Image.fromarray((arr * (255.0 / top)).astype(np.uint8))
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
            rgb = img.convert("RGB")
            if orientation != 1:
                rgb = rgb.transpose(ORIENTATION_TRANSPOSE[orientation])
            return rgb
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

    Pillow's ``split`` de-interleaves in C, several times faster than a NumPy
    transpose of a 3-channel array.
    """
    img = as_pil(img)
    out = np.empty((3, img.height, img.width), dtype)
    for c, band in enumerate(img.split()):
        out[c] = np.asarray(band)
    return out


def write_planes(rgb_planes, out, caffe=False, flip_h=False, flip_v=False):
    """Interleave ``(3, H, W)`` RGB planes into ``out`` ``(H, W, 3)`` float32, flipped on request.

    Args:
        rgb_planes: ``(3, H, W)`` RGB values in ``[0, 255]`` (float32 or uint8).
        out: ``(H, W, 3)`` float32 array written in place.
        caffe: write :func:`preprocess_input` of the image (BGR, ImageNet mean
            subtracted) instead of the RGB values; the same float32 numbers.
        flip_h, flip_v: mirror left-right / top-bottom.

    Returns:
        ``out``.
    """
    view = rgb_planes[:, ::-1 if flip_v else 1, ::-1 if flip_h else 1]
    for c in range(3):
        if caffe:
            np.subtract(view[2 - c], CAFFE_MEAN_BGR[c], out=out[..., c])
        else:
            out[..., c] = view[c]
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
