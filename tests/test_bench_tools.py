"""The training-step benchmark's FLOP count and batches, the speed settings, and the GPU script's dry run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT

keras = pytest.importorskip("keras")
sys.path.insert(0, str(ROOT / "bench"))
import bench_train  # noqa: E402

from ssd300.speed import GENERIC_KERNELS_ABOVE, choose_tensorflow_cpu_kernels, cpu_has_avx512  # noqa: E402
from ssd300.speed import fit_settings  # noqa: E402


def test_forward_flops_known_values():
    from ssd300.ssd_v2 import SSD300v2

    # SSD300 is 31.2 G multiply-adds per 300x300 image (Liu et al.'s VGG16 variant).
    assert abs(bench_train.forward_flops(SSD300v2((300, 300, 3))) / 1e9 - 62.4) < 0.05
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.Conv2D(6, 3, padding="valid")(x)
    outputs = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(x))
    toy = keras.Model(inputs, outputs)
    assert bench_train.forward_flops(toy) == 2 * (100 * 9 * 3 * 4 + 64 * 9 * 4 * 6 + 6 * 5)


def test_training_batch_has_positives():
    from ssd300.ssd_v2 import SSD300v2

    model = SSD300v2((64, 64, 3))
    x, y = bench_train.training_batch(model, 3)
    assert x.shape == (3, 64, 64, 3) and y.shape == (3,) + model.output_shape[1:]
    assert np.all(y[..., -8].sum(axis=1) >= 1)
    np.testing.assert_allclose(y[..., 4:25].sum(-1), 1.0)


def test_fit_settings_on_the_cpu():
    # This suite's machine has no GPU: XLA only on JAX.
    assert fit_settings("jax") == {"jit_compile": True}
    assert fit_settings("torch") == {"jit_compile": False}
    assert fit_settings() == fit_settings(keras.backend.backend())
    if keras.backend.backend() == "tensorflow":
        assert fit_settings("tensorflow") == {"jit_compile": False}


def test_cpu_kernels_chosen_by_cpu_and_input_size(tmp_path):
    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\n")
    avx512 = tmp_path / "avx512"
    avx512.write_text("flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq\n")
    assert (cpu_has_avx512(avx2), cpu_has_avx512(avx512), cpu_has_avx512(tmp_path / "absent")) == (False, True, None)

    def choose(size, cpuinfo=avx2, modules=(), **environ):
        note = choose_tensorflow_cpu_kernels(size, environ, cpuinfo, modules)
        return environ.get("TF_ENABLE_ONEDNN_OPTS"), note

    value, note = choose(300)
    assert value == "0" and "300x300" in note
    assert choose(GENERIC_KERNELS_ABOVE + 1)[0] == "0"
    assert choose(GENERIC_KERNELS_ABOVE) == (None, None)  # the demo's 128 and up to 200: oneDNN
    assert choose(300, cpuinfo=avx512) == (None, None)
    assert choose(300, cpuinfo=tmp_path / "absent") == (None, None)  # unknown CPU: leave it
    assert choose(300, TF_ENABLE_ONEDNN_OPTS="1") == ("1", None)  # the user's choice
    assert choose(300, KERAS_BACKEND="jax") == (None, None)
    assert choose(300, modules={"tensorflow": None}) == (None, None)  # too late to choose


def test_training_script_imports_no_tensorflow_before_choosing():
    from ssd300 import cli
    from ssd300.demo import DEMO
    from ssd300.training import TrainConfig

    assert cli.DEFAULT_INPUT_SIZE == {"train": TrainConfig().input_size, "demo": DEMO.input_size}
    code = ("import sys, ssd_training, ssd300.cli; assert 'tensorflow' not in sys.modules; "
            "from ssd_training import MultiboxLoss; assert MultiboxLoss.__name__ == 'MultiboxLoss'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


@pytest.mark.slow
def test_gpu_bench_dry_run(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "tools" / "gpu_bench.py"), "--dry-run", "--out", str(out),
               "--backends", "torch", "--precisions", "float32", "--train-backend", "torch",
               "--data", str(tmp_path / "absent")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, KERAS_BACKEND="tensorflow"))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "gpu_bench.json").read_text())
    step = report["steps"][0]
    assert step["backend"] == "torch" and step["batch"] == 2 and step["size"] == 64
    assert step["images_per_s"] > 0 and np.isfinite(step["loss"])
    assert report["steps"][1]["model"] == "torchvision ssd300_vgg16"
    # The data did not travel: the pipeline and the training ran on the synthetic set, and said so.
    assert [p["augment"] for p in report["pipeline"]] == ["original", "paper"]
    assert all(p["images_per_s"] > 0 and "synthetic" in p["source"] for p in report["pipeline"])
    training = report["training"]
    assert training["returncode"] == 0, training["output_tail"]
    assert [e["epoch"] for e in training["epochs"]] == [0, 1]
    assert all(np.isfinite(e["loss"]) for e in training["epochs"])
    assert "## Training step, 64x64, batch 2" in done.stdout and "synthetic" in done.stdout
    assert (out / "gpu_bench.md").read_text() == done.stdout


def test_torchvision_comparison_lines():
    rows = [dict(backend="tensorflow", size=300, batch=8, step_s=8.0, best_step_s=7.5, cpu_step_s=15.0),
            dict(backend="tensorflow", size=128, batch=8, step_s=1.0, best_step_s=1.0, cpu_step_s=2.0)]
    torchvision = dict(size=300, batch=8, threads=2, step_s=10.4, best_step_s=9.75, cpu_step_s=21.0,
                       images_per_s=8 / 10.4, gflop_per_image=188.24)
    lines = bench_train.compare_with_torchvision(rows, torchvision)
    assert lines == [
        "torchvision ssd300_vgg16, 300x300, batch 8, 2 threads: 10.40 s per step (best 9.75; CPU 21.00 s), "
        "0.77 images/s, 188.2 GFLOP per image",
        "ssd300 tensorflow: 1.30x torchvision's images/s (best steps 1.30x; per CPU second 1.40x)"]


def test_torchvision_run_reports_what_went_wrong(tmp_path):
    absent = tmp_path / "no-python"
    assert bench_train.run_torchvision(str(absent), 300, 8, 1)["error"].startswith(f"cannot run {absent}")
    assert bench_train.run_torchvision("/bin/false", 300, 8, 1)["error"].startswith("/bin/false exited 1")
