"""The fastest correct ``model.compile`` settings for training SSD300 on each backend.

Measured with ``bench/bench_train.py`` (model + ``MultiboxLoss`` + Adam,
300x300 and 128x128, batch 8) on a 2-core AVX-512 CPU:

* TensorFlow on the CPU: no XLA. XLA's CPU convolutions made the step about
  twice as slow (its gradient of ``fc6``'s dilated convolution most of all).
  With a GPU, Keras's ``"auto"`` (XLA).
* JAX: ``jit_compile=True``; without it every op runs on its own.
* PyTorch: eager (``jit_compile=False``); ``torch.compile`` takes minutes
  to compile SSD300's step on the CPU.

``fc6``'s speed on the CPU comes from :class:`ssd300.dilated_conv.DilatedConv2D`,
whatever these settings are.

TensorFlow's CPU kernels (:func:`choose_tensorflow_cpu_kernels`): on CPUs
without AVX-512, oneDNN's gradient of a convolution's kernel is 3-6x slower
than its forward pass for SSD300's large early layers (``conv1_2`` at
300x300: 1.77 s against 0.32 s, batch 8, oneDNN limited to AVX2 on an AMD
EPYC), while TensorFlow's generic kernels take 0.62 s. Above 200x200 inputs
the generic kernels make the whole step faster there (300x300: 0.72 of the
matmul rate against 0.58); at the demo's 128x128 oneDNN is faster (1.71 s
against 2.07 s a step). With AVX-512, oneDNN is faster at every size.
"""

import os
import sys

#: Above this input size, a CPU without AVX-512 trains faster with TensorFlow's
#: generic kernels than with oneDNN's (see the module docstring).
GENERIC_KERNELS_ABOVE = 200


def fit_settings(backend=None):
    """Keyword arguments for ``model.compile`` in training, for ``backend``.

    Args:
        backend: ``"tensorflow"``, ``"jax"`` or ``"torch"``; ``None`` for
            Keras's current backend.

    Returns:
        ``{"jit_compile": True | False | "auto"}``.

    Example:
        >>> model.compile(optimizer=..., loss=..., **fit_settings())  # doctest: +SKIP
    """
    import keras

    backend = backend or keras.backend.backend()
    if backend == "jax":
        return {"jit_compile": True}
    if backend == "tensorflow":
        import tensorflow as tf

        return {"jit_compile": "auto" if tf.config.list_logical_devices("GPU") else False}
    return {"jit_compile": False}


def cpu_has_avx512(cpuinfo="/proc/cpuinfo"):
    """Whether the CPU has AVX-512 (``avx512f``); ``None`` where ``cpuinfo`` cannot be read."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512f" in line.split()
    except OSError:
        return None
    return None


def choose_tensorflow_cpu_kernels(input_size, environ=None, cpuinfo="/proc/cpuinfo", modules=None):
    """Turn oneDNN off for training at ``input_size`` where TensorFlow's generic kernels are faster.

    Sets ``TF_ENABLE_ONEDNN_OPTS=0`` when the CPU has no AVX-512 and
    ``input_size`` exceeds :data:`GENERIC_KERNELS_ABOVE`. TensorFlow reads the
    variable when it is imported, so this must run before; it leaves alone a
    variable the user set, another backend, and a TensorFlow already
    imported. Only the CPU kernels change, never the model or its numbers
    beyond float rounding.

    Args:
        input_size: the training input's height and width.
        environ: the environment to set (default ``os.environ``).
        cpuinfo: where to read the CPU flags.
        modules: the imported modules (default ``sys.modules``).

    Returns:
        A line saying what was chosen, or ``None`` when nothing was set.
    """
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if ("TF_ENABLE_ONEDNN_OPTS" in environ or environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow"
            or "tensorflow" in modules or input_size <= GENERIC_KERNELS_ABOVE
            or cpu_has_avx512(cpuinfo) is not False):
        return None
    environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    return (f"TensorFlow: generic CPU kernels (TF_ENABLE_ONEDNN_OPTS=0): faster than oneDNN's at "
            f"{input_size}x{input_size} on a CPU without AVX-512")
