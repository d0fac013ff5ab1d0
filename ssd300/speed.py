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
"""


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
