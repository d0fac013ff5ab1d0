"""Running a trained SSD on picture files: detections in pixel coordinates."""

import os

import numpy as np

from .image_io import open_rgb, preprocess_input, resize
from .priors import priors_from_model
from .ssd_utils import BBoxUtility


class Detector:
    """A model with its ``BBoxUtility``, applied to image files.

    Args:
        model: an SSD model (``SSD300v2``).
        classes: class names without the background.
        confidence_threshold, nms_thresh, top_k, keep_top_k: as for
            ``BBoxUtility.detection_out``.
    """

    def __init__(self, model, classes, confidence_threshold=0.01, nms_thresh=0.45, top_k=400,
                 keep_top_k=200):
        self.model = model
        self.classes = tuple(classes)
        self.input_size = tuple(model.input_shape[1:3])
        self.bbox_util = BBoxUtility(len(self.classes) + 1, priors_from_model(model),
                                     nms_thresh=nms_thresh, top_k=top_k)
        self.confidence_threshold = confidence_threshold
        self.keep_top_k = keep_top_k

    def detect_arrays(self, images):
        """Detections for RGB uint8 arrays of any sizes.

        Returns:
            a list of ``(K, 6)`` ``[label, score, xmin, ymin, xmax, ymax]`` in
            pixels of each image.
        """
        if not len(images):
            return []
        batch = preprocess_input(np.stack([resize(np.asarray(im), self.input_size) for im in images]))
        predictions = np.asarray(self.model.predict(batch, verbose=0))
        results = self.bbox_util.detection_out(predictions, keep_top_k=self.keep_top_k,
                                               confidence_threshold=self.confidence_threshold)
        out = []
        for image, det in zip(images, results):
            h, w = np.asarray(image).shape[:2]
            det = det.copy()
            det[:, 2:6] *= [w, h, w, h]
            out.append(det)
        return out

    def detect_files(self, paths, batch_size=8, progress=False):
        """``(detections, sizes)`` for image files, read in batches.

        Raises:
            ImageError: a file is missing or unreadable (names the file).
        """
        paths = [os.fspath(p) for p in paths]
        iterator = range(0, len(paths), batch_size)
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, desc="detecting", unit="batch")
        detections, sizes = [], []
        for start in iterator:
            images = [np.asarray(open_rgb(p)) for p in paths[start:start + batch_size]]
            detections.extend(self.detect_arrays(images))
            sizes.extend((im.shape[1], im.shape[0]) for im in images)
        return detections, sizes

    def evaluate_voc(self, voc_root, annotations, batch_size=8, use_07_metric=True, progress=False):
        """Detect on a VOC folder's pictures and score them with the devkit's rules.

        Args:
            voc_root: the folder holding ``JPEGImages``.
            annotations: the split's ``XML_preprocessor``.

        Returns:
            ``(detections, result)``: ``{image_id: (K, 6)}`` in pixels, and
            :func:`ssd300.evaluation.evaluate_detections`'s result.
        """
        from .evaluation import evaluate_detections, ground_truth_from_annotations

        keys = sorted(annotations.data)
        found, _ = self.detect_files([os.path.join(voc_root, "JPEGImages", k) for k in keys],
                                     batch_size, progress)
        detections = {os.path.splitext(k)[0]: d for k, d in zip(keys, found)}
        result = evaluate_detections(detections, ground_truth_from_annotations(annotations.annotations),
                                     use_07_metric=use_07_metric)
        return detections, result
