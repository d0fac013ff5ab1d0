"""Running a trained SSD on picture files: detections in pixel coordinates."""

import os

import numpy as np

from .errors import UserError
from .image_io import keys_used_as_stored, open_rgb, preprocess_input, resize, rgb_array
from .layout import num_classes_of, num_columns
from .priors import priors_from_model
from .ssd_utils import BBoxUtility, check_detection_options
from .voc import check_classes


class PictureDetector:
    """What every detector does with pictures, given a batch's normalised detections.

    A subclass sets ``input_size`` (``(height, width)`` of its input) and
    ``classes``, and implements :meth:`detect_batch`; this class resizes the pictures, puts the
    boxes in each picture's pixel frame and reads files (see
    :class:`Detector` for Keras weights and
    :class:`ssd300.onnx_runtime.OnnxDetector` for an exported ONNX file).
    """

    input_size = None
    #: The class names without the background (label ``i`` is ``classes[i - 1]``), or ``None`` (unknown).
    classes = None

    def detect_batch(self, batch):
        """Detections for ``(B, h, w, 3)`` uint8 RGB at ``input_size``.

        Returns:
            a list of ``B`` ``(K, 6)`` ``[label, score, xmin, ymin, xmax,
            ymax]`` arrays, boxes normalised, by decreasing score.
        """
        raise NotImplementedError

    def detect_arrays(self, images, sizes=None):
        """Detections for RGB uint8 arrays of any sizes.

        Args:
            images: a list of ``(H, W, 3)`` uint8 arrays (gray and RGBA arrays
                and ``PIL`` images are converted, see
                :func:`ssd300.image_io.rgb_array`).
            sizes: optional ``(width, height)`` of each image's pixel frame
                to give the boxes in (an annotation's ``<size>``, which
                training normalised the boxes by); ``None`` entries or no
                ``sizes``: the array's own size.

        Returns:
            a list of ``(K, 6)`` ``[label, score, xmin, ymin, xmax, ymax]`` in
            pixels of each image's frame.

        Raises:
            ValueError: a picture that is not uint8 pixels of one of those
                shapes (named by its position), or one array instead of a list.
        """
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise ValueError(f"detect_arrays takes a list of pictures, got one array of shape {images.shape}")
        if not len(images):
            return []
        if sizes is None:
            sizes = [None] * len(images)
        if len(sizes) != len(images):
            raise ValueError(f"{len(images)} images but {len(sizes)} sizes")
        images = [rgb_array(image, f"image {i}") for i, image in enumerate(images)]
        batch = np.stack([resize(image, self.input_size) for image in images])
        found = self.detect_batch(batch)
        if len(found) != len(batch):  # zip would drop pictures without a word
            raise RuntimeError(f"{type(self).__name__}.detect_batch returned {len(found)} results "
                               f"for {len(batch)} pictures")
        out = []
        for image, size, det in zip(images, sizes, found):
            w, h = size if size is not None else image.shape[1::-1]  # (W, H) of (H, W, 3)
            det = np.array(det, dtype=np.float64)
            det[:, 2:6] *= [w, h, w, h]
            out.append(det)
        return out

    def detect_files(self, paths, batch_size=8, progress=False, sizes=None):
        """``(detections, sizes)`` for image files, read in batches.

        Args:
            paths: image files.
            batch_size: images per forward pass.
            progress: show a progress bar.
            sizes: optional annotated ``(width, height)`` of each file (or
                ``None`` entries). Where given, the file is read as training
                reads it (as stored when its EXIF orientation swaps the sides
                but the annotation has the stored size, see
                :func:`ssd300.image_io.keys_used_as_stored`) and its boxes
                are given in that ``(width, height)`` frame, the ground
                truth's, although the picture may be stored at another size.

        Returns:
            ``(detections, sizes)``: ``(K, 6)`` pixel detections per file and
            the ``(width, height)`` of the frame they are in (the annotated
            size where given, else the picture's, upright).

        Raises:
            ImageError: a file is missing or unreadable (names the file).
        """
        paths = [os.fspath(p) for p in paths]
        frames = list(sizes) if sizes is not None else [None] * len(paths)
        if len(frames) != len(paths):
            raise ValueError(f"{len(paths)} paths but {len(frames)} sizes")
        as_stored = frozenset()
        if any(f is not None for f in frames):

            as_stored = keys_used_as_stored("", {p: f for p, f in zip(paths, frames) if f is not None})
        iterator = range(0, len(paths), batch_size)
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, desc="detecting", unit="batch")
        detections, out_sizes = [], []
        for start in iterator:
            part = slice(start, start + batch_size)
            images = [np.asarray(open_rgb(p, orient=p not in as_stored)) for p in paths[part]]
            detections.extend(self.detect_arrays(images, frames[part]))
            out_sizes.extend(tuple(f) if f is not None else (im.shape[1], im.shape[0])
                             for im, f in zip(images, frames[part]))
        return detections, out_sizes

    def evaluate_voc(self, voc_root, annotations, batch_size=8, use_07_metric=True, progress=False):
        """Detect on a VOC folder's pictures and score them with the devkit's rules.

        Each picture is read as training reads it and its detections are
        given in its annotation's ``(width, height)`` frame, the ground
        truth's (see :meth:`detect_files`).

        Args:
            voc_root: the folder holding ``JPEGImages``.
            annotations: the split's ``XML_preprocessor``.

        Returns:
            ``(detections, result)``: ``{image_id: (K, 6)}`` in pixels, and
            :func:`ssd300.evaluation.evaluate_detections`'s result.

        Raises:
            AnnotationError: two pictures have the same devkit image id
                (``a.jpg`` and ``a.png``).
            ImageError: a picture is missing or unreadable.
            UserError: the annotations' classes are not the detector's (in order).
        """
        from .evaluation import devkit_image_ids, evaluate_detections, ground_truth_from_annotations
        from .voc import annotation_sizes

        if not all(hasattr(annotations, name) for name in ("data", "annotations", "classes")):
            raise TypeError(f"annotations must be a dataset read with XML_preprocessor (or load_coco), "
                            f"got {type(annotations).__name__}")
        if self.classes is not None and tuple(self.classes) != tuple(annotations.classes):
            # Labels are positions in the class list: other names or another order score the wrong boxes.
            raise UserError(f"the detector's classes {list(self.classes)} are not the annotations' "
                            f"{list(annotations.classes)}: read the annotations with the detector's classes")
        keys = sorted(annotations.data)
        ids = devkit_image_ids(keys)
        ground_truth = ground_truth_from_annotations(annotations.annotations)
        sizes = annotation_sizes(annotations.annotations)
        frames = [sizes[k] for k in keys]
        found, _ = self.detect_files([os.path.join(voc_root, "JPEGImages", k) for k in keys],
                                     batch_size, progress, sizes=frames)
        detections = {ids[k]: d for k, d in zip(keys, found)}
        result = evaluate_detections(detections, ground_truth, use_07_metric=use_07_metric)
        return detections, result


class Detector(PictureDetector):
    """A model with its ``BBoxUtility``, applied to image files.

    Args:
        model: an SSD model (``SSD300v2``).
        classes: class names without the background.
        confidence_threshold, nms_thresh, top_k, keep_top_k: as for
            ``BBoxUtility.detection_out``.
    """

    def __init__(self, model, classes, confidence_threshold=0.01, nms_thresh=0.45, top_k=400,
                 keep_top_k=200):
        if not all(hasattr(model, name) for name in ("predict", "input_shape", "output_shape")):
            raise TypeError(f"Detector needs a Keras SSD model, got {type(model).__name__} (build one "
                            "with ssd300.SSD300 and load weights with ssd300.load_weights_by_name)")
        classes = check_classes(classes, "Detector classes")
        check_detection_options(keep_top_k=keep_top_k, confidence_threshold=confidence_threshold)
        columns = model.output_shape[-1]
        if columns != num_columns(len(classes) + 1):
            raise UserError(f"Detector: {len(classes)} class names for a model that detects "
                            f"{num_classes_of(columns) - 1} classes + background")
        self.model = model
        self.classes = classes
        self.input_size = tuple(model.input_shape[1:3])
        self.bbox_util = BBoxUtility(len(self.classes) + 1, priors_from_model(model),
                                     nms_thresh=nms_thresh, top_k=top_k)
        self.confidence_threshold = confidence_threshold
        self.keep_top_k = keep_top_k

    def detect_batch(self, batch):
        predictions = np.asarray(self.model.predict(preprocess_input(batch), verbose=0))
        return self.bbox_util.detection_out(predictions, keep_top_k=self.keep_top_k,
                                            confidence_threshold=self.confidence_threshold)
