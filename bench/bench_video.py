"""Detection on a video against the model's own forward rate, at the same batch and input size.

Run: .venv/bin/python bench/bench_video.py                    (300x300, batch 8, 32 frames of 640x360)
     .venv/bin/python bench/bench_video.py --input-size 128 --frames 96

It writes a synthetic video (moving shapes, ``ssd300.video.write_synthetic_video``)
and prints, in frames/s:

* forward: ``model.predict`` on batches of preprocessed frames (what
  ``Detector.detect_arrays`` calls), the frames already decoded and resized;
* detect_arrays: ``Detector.detect_arrays`` on the decoded frames in memory
  (resize, preprocessing, forward, ``detection_out``);
* video: ``ssd300.video.detect_video`` on the file, end to end (decoding, the
  detector, drawing, encoding the annotated MP4 and writing the JSON lines);

and the ratio video / forward, with the machine's NumPy float32 matmul rate.
On a CPU the model keeps every core busy, so the process's CPU time per
frame, forward alone against the whole video, gives that ratio too, and
unlike wall time it holds on a machine other programs load.
Each rate is the best of ``--repeat`` runs (they alternate, so that a busy
machine slows all), and the ratio of each run is printed too. The model has
random weights with the background bias raised so that, like a trained
model, it leaves about 600 candidates per frame above ``detection_out``'s
0.01 threshold (as in ``bench_box_utils.py``). Works unchanged on a GPU (Keras places
the model there).
"""

import argparse
import os
import sys
import tempfile
import time
from common import matmul_gflops  # noqa: E402  (bench/ is on sys.path)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_detector(size, num_classes=21):
    import keras

    from ssd300 import SSD300
    from ssd300.detect import Detector

    keras.utils.set_random_seed(0)
    return Detector(SSD300((size, size, 3), num_classes=num_classes), [f"class{i}" for i in range(1, num_classes)])


def raise_background(detector, x, candidates=600.0):
    """Raise the class heads' background bias so that about ``candidates`` class scores per image exceed 0.01.

    A logit raised by ``d`` turns the other classes' softmax scores ``p_c``
    into ``p_c / (p_0 e^d + 1 - p_0)``, so ``d`` is found by bisection on one
    prediction of ``x``. Returns ``(d, candidates per image after)``.
    """
    import numpy as np

    from ssd300.layout import split_predictions

    conf = split_predictions(detector.model.predict(x, verbose=0))[1].astype(np.float64)
    p0, rest = conf[..., :1], conf[..., 1:]

    def count(d):
        return (rest / (p0 * np.exp(d) + 1 - p0) > 0.01).sum() / len(conf)

    lo, hi = 0.0, 30.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count(mid) > candidates else (lo, mid)
    num_classes = conf.shape[-1]
    for layer in detector.model.layers:
        if "mbox_conf" in layer.name and layer.weights:
            kernel, bias = layer.get_weights()
            bias = bias.reshape(-1, num_classes)
            bias[:, 0] += hi
            layer.set_weights([kernel, bias.reshape(-1)])
    after = split_predictions(detector.model.predict(x, verbose=0))[1]
    return hi, (after[..., 1:] > 0.01).sum() / len(after)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input-size", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--frames", type=int, default=32, help="video length (a multiple of the batch size)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import keras
    import numpy as np

    from ssd300.image_io import preprocess_input, resize
    from ssd300.video import detect_video, write_synthetic_video

    gflops = matmul_gflops()
    detector = build_detector(args.input_size)
    b, n = args.batch_size, args.frames
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "synthetic.mp4")
        codec_in = write_synthetic_video(source, frames=n, size=(args.width, args.height), fps=25.0)
        import cv2

        capture = cv2.VideoCapture(source)
        frames = [cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB) for _ in range(n)]
        capture.release()
        processed = frames[::args.every]
        batches = [preprocess_input(np.stack([resize(f, detector.input_size) for f in processed[i:i + b]]))
                   for i in range(0, len(processed), b)]
        shift, candidates = raise_background(detector, batches[0])
        for x in {x.shape: x for x in batches}.values():  # trace each batch shape once
            detector.model.predict(x, verbose=0)
        detector.detect_arrays(processed[:b])

        forward = arrays = whole = 0.0
        ratios, detections = [], 0
        cpu_forward = cpu_video = float("inf")
        for _ in range(args.repeat):
            t, c = time.perf_counter(), time.process_time()
            for x in batches:
                detector.model.predict(x, verbose=0)
            pair = len(processed) / (time.perf_counter() - t)
            cpu_forward = min(cpu_forward, (time.process_time() - c) / len(processed))
            forward = max(forward, pair)
            t = time.perf_counter()
            for i in range(0, len(processed), b):
                found = detector.detect_arrays(processed[i:i + b])
            arrays = max(arrays, len(processed) / (time.perf_counter() - t))
            detections = sum(len(d) for d in found) / len(found)
            t, c = time.perf_counter(), time.process_time()
            result = detect_video(detector, source, os.path.join(folder, "out.mp4"),
                                  os.path.join(folder, "out.jsonl"), every=args.every, batch_size=b,
                                  progress=False, min_score=0.5)
            rate = result.processed / (time.perf_counter() - t)
            cpu_video = min(cpu_video, (time.process_time() - c) / result.processed)
            whole = max(whole, rate)
            ratios.append(rate / pair)
            assert result.frames == n, result

    print(f"backend {keras.backend.backend()}, input {args.input_size}x{args.input_size}, batch {b}, "
          f"{n} frames of {args.width}x{args.height} ({codec_in}), every {args.every}, "
          f"background logit +{shift:.1f}: {candidates:.0f} candidates and {detections:.0f} detections per "
          f"frame above 0.01, best of {args.repeat}")
    print(f"forward (model.predict, preprocessed) {forward:7.2f} frames/s")
    print(f"Detector.detect_arrays                {arrays:7.2f} frames/s  ({arrays / forward:.3f} of forward)")
    print(f"detect_video, end to end              {whole:7.2f} processed frames/s  "
          f"({whole / forward:.3f} of forward), codec written: {result.codec}")
    print(f"video / forward of each run, in order: {' '.join(f'{r:.3f}' for r in ratios)}")
    print(f"CPU time per processed frame (all threads): forward {cpu_forward * 1e3:.0f} ms, video "
          f"{cpu_video * 1e3:.0f} ms: forward / video {cpu_forward / cpu_video:.3f} (the rate ratio on an idle "
          f"CPU that the model saturates, whatever else runs)")
    print(f"NumPy float32 matmul {gflops:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
