"""assign_boxes and detection_out against the one-box-at-a-time / per-class restatements.

Run: .venv/bin/python bench/bench_box_utils.py
Prints the time per call of each and the ratio; pinned to one core. Also
prints what writing ``assign_boxes``'s dense output alone costs, which bounds
its ratio, and the ``DecodeDetections`` layer (detection_out in keras.ops) on
the same predictions: as Keras runs it on the backend (``KERAS_BACKEND``;
TensorFlow: a graph, which is what ``predict`` uses on a CPU, and XLA; JAX:
jit; PyTorch: eager), and exported, in onnxruntime and LiteRT when installed.
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from ssd300.priors import load_priors  # noqa: E402
from ssd300.ssd_utils import BBoxUtility  # noqa: E402
from tests.conftest import random_boxes  # noqa: E402
from tests.reference import assign_boxes_one_at_a_time, detection_out_per_class  # noqa: E402
from tests.test_box_utils import fake_predictions  # noqa: E402


def per_call(fn, repeat):
    fn()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - t) / repeat)
    return best


def main():
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    priors = load_priors(ROOT / "prior_boxes_ssd300.pkl")
    util = BBoxUtility(21, priors)
    rng = np.random.default_rng(0)
    shape = (len(priors), 4 + 21 + 8)

    def empty_target():
        target = np.zeros(shape)
        target[:, 4] = 1.0  # background
        return target

    floor = per_call(empty_target, 200)
    print(f"assign_boxes (7308 priors, 21 classes); writing the {shape} float64 output alone "
          f"takes {floor * 1e6:.0f} us")
    for n in (1, 3, 5):
        boxes = np.concatenate([random_boxes(rng, n, 0.05, 0.8), np.eye(20)[rng.integers(0, 20, n)]], 1)
        new = per_call(lambda: util.assign_boxes(boxes), 200)
        old = per_call(lambda: assign_boxes_one_at_a_time(boxes, priors, 21), 50)
        print(f"  {n} boxes: {new * 1e3:7.3f} ms  restatement {old * 1e3:7.3f} ms  ratio {old / new:6.1f}x"
              f"  (at most {old / floor:5.1f}x)")

    # float32, as the model outputs them.
    preds = fake_predictions(rng, priors, 8).astype(np.float32)
    candidates = int((preds[..., 5:-8] > 0.01).sum()) / 8
    new = per_call(lambda: util.detection_out(preds), 5)
    old = per_call(lambda: detection_out_per_class(preds, 21), 1)
    print(f"detection_out, batch of 8, {candidates:.0f} candidates per image above 0.01")
    print(f"  {new * 1e3:7.2f} ms per batch ({new / 8 * 1e3:.2f} ms per image)  "
          f"restatement {old * 1e3:7.1f} ms  ratio {old / new:6.1f}x")
    bench_decode_layer(util, preds)


def decode_layer_runners(preds):
    """``{name: callable}`` running DecodeDetections on ``preds``, each returning NumPy arrays."""
    import keras

    from ssd300.decode_detections import DecodeDetections

    layer = DecodeDetections()
    runners = {}
    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # One core: one thread per pool, as onnxruntime and LiteRT below.
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(1)
        x = tf.constant(preds)
        for name, jit in (("graph", False), ("XLA", True)):
            fn = tf.function(layer, jit_compile=jit)
            runners[f"tensorflow {name}"] = lambda fn=fn: {k: v.numpy() for k, v in fn(x).items()}
    elif backend == "jax":
        import jax

        fn = jax.jit(layer)
        runners["jax jit"] = lambda: {k: np.asarray(v) for k, v in fn(preds).items()}
    else:
        runners[f"{backend} eager"] = lambda: {k: keras.ops.convert_to_numpy(v)
                                               for k, v in layer(preds).items()}
    if backend == "tensorflow":
        import tempfile

        from ssd300.export import OUTPUT_NAMES, export_detector

        inputs = keras.Input(preds.shape[1:], name="predictions")
        model = keras.Model(inputs, layer(inputs))
        folder = tempfile.mkdtemp()
        for format, suffix in (("onnx", ".onnx"), ("litert", ".tflite")):
            try:
                path = export_detector(model, os.path.join(folder, "decoder" + suffix), format)
                if format == "onnx":
                    import onnxruntime

                    options = onnxruntime.SessionOptions()
                    options.intra_op_num_threads = options.inter_op_num_threads = 1  # one core
                    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
                    run = lambda session=session: dict(zip(  # noqa: E731
                        [o.name for o in session.get_outputs()], session.run(None, {"predictions": preds})))
                    runners["exported, onnxruntime"] = run
                else:
                    from ai_edge_litert.interpreter import Interpreter

                    runner = Interpreter(model_path=path, num_threads=1).get_signature_runner()
                    runners["exported, LiteRT"] = lambda runner=runner: runner(predictions=preds)
            except Exception as e:  # a runtime or converter not installed: say so, go on
                print(f"  ({format}: not measured, {type(e).__name__}: {e})")
        runners = {k: (lambda run=run: {n: np.asarray(v) for n, v in run().items() if n in OUTPUT_NAMES})
                   for k, run in runners.items()}
    return runners


def bench_decode_layer(util, preds):
    expected = util.detection_out(preds)
    print("DecodeDetections (the same detections as a Keras layer), same predictions")
    for name, run in decode_layer_runners(preds).items():
        out = run()
        same = all(len(e) == n for e, n in zip(expected, out["num_detections"]))
        t = per_call(run, 5)
        ref = per_call(lambda: util.detection_out(preds), 5)
        print(f"  {name:28s} {t * 1e3:7.2f} ms per batch  detection_out {ref * 1e3:6.2f} ms  "
              f"ratio {t / ref:5.2f}x{'' if same else '  (DIFFERENT DETECTIONS)'}")


if __name__ == "__main__":
    main()
