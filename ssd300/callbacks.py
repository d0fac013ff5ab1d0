"""Keras callbacks of the training run: checkpoints, NaN and time guards, a progress bar."""

import math
import os
import time

import keras
import numpy as np

from .checkpoint import CHECKPOINT, save_checkpoint, write_log
from .visualize import plot_history
from .weights import save_weights_by_name


def save_last(model, out, state):
    """``last.h5`` (weights by name) and ``checkpoint.npz`` (for ``--resume``), each atomically."""
    save_weights_by_name(model, os.path.join(out, "last.h5"))
    save_checkpoint(os.path.join(out, CHECKPOINT), model.get_weights(),
                    [np.asarray(v) for v in model.optimizer.variables], state)


class Checkpointer(keras.callbacks.Callback):
    """After each epoch: ``best.h5``, ``last.h5``, ``checkpoint.npz``, then ``log.csv`` and ``loss.png``.

    The log is written from the history saved in the checkpoint, after the
    checkpoint is committed, so a run killed in between never logs an epoch
    twice.

    Args:
        out: the output folder.
        state: the run state (a dict), updated in place: ``epoch``,
            ``history``, ``best``; read for ``nan`` (set by :class:`StopOnNaN`).
        write: write the files (``False`` on the processes other than 0 of
            a distributed run: they keep only ``state``).
    """

    def __init__(self, out, state, write=True):
        super().__init__()
        self.out = out
        self.state = state
        self.write = write

    def on_epoch_end(self, epoch, logs=None):
        state = self.state
        if state.get("nan"):
            return  # keep the last good files
        history = state.setdefault("history", {})
        for key, value in (logs or {}).items():
            history.setdefault(key, []).append(float(value))
        state["epoch"] = epoch + 1
        logs = logs or {}
        val = logs.get("val_loss", logs.get("loss"))
        if val is not None and np.isfinite(val) and val < state.get("best", math.inf):
            state["best"] = float(val)
            if self.write:
                save_weights_by_name(self.model, os.path.join(self.out, "best.h5"))
        if not self.write:
            return
        save_last(self.model, self.out, state)
        write_log(history, os.path.join(self.out, "log.csv"))
        plot_history(history, os.path.join(self.out, "loss.png"))


class DataEpoch(keras.callbacks.Callback):
    """Tell the training data which epoch begins, so its order and augmentation follow Keras's epoch.

    ``SSDDataset`` draws its order and augmentation from ``(seed, epoch,
    index)``; counting its own epochs would drift from Keras's (which peeks at
    batches and ends epochs early under ``steps_per_epoch``), and a resumed run
    would not see the data an uninterrupted one sees.
    """

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.epoch = epoch


class StopOnNaN(keras.callbacks.Callback):
    """Stop at the first non-finite batch loss and record why in ``state["nan"]``."""

    def __init__(self, state):
        super().__init__()
        self.state = state

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            self.state["nan"] = (f"loss became {loss} at epoch {self.state.get('epoch', 0) + 1}, "
                                 f"batch {batch + 1}")
            self.model.stop_training = True


class TimeLimit(keras.callbacks.Callback):
    """Stop training (at the end of the current batch) after ``minutes``.

    Args:
        minutes: the limit.
        agree: ``agree(late) -> bool``, the decision every process of a
            distributed run takes (``DataParallelRun.agree``), so that
            all stop at the same step; ``None``: this process's clock.
    """

    def __init__(self, minutes, agree=None):
        super().__init__()
        self.minutes = minutes
        self.agree = agree

    def on_train_begin(self, logs=None):
        self.deadline = time.monotonic() + 60 * self.minutes

    def on_train_batch_end(self, batch, logs=None):
        late = time.monotonic() > self.deadline
        if self.agree(late) if self.agree else late:
            self.model.stop_training = True


class ProgressBar(keras.callbacks.Callback):
    """One bar for the whole run (steps, rate, ETA) and a line per epoch.

    Args:
        initial_epoch: the epoch the run starts from (after ``--resume``).
        bar: show the bar; ``False`` prints the epoch lines only.
    """

    def __init__(self, initial_epoch=0, bar=True):
        super().__init__()
        self.initial_epoch = initial_epoch
        self.show_bar = bar
        self.bar = None

    def on_train_begin(self, logs=None):
        from tqdm import tqdm

        epochs, steps = self.params.get("epochs"), self.params.get("steps")
        total = (epochs - self.initial_epoch) * steps if epochs and steps else None
        self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, desc="training",
                        disable=not self.show_bar)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if logs and "loss" in logs and self.show_bar:
            self.bar.set_postfix(epoch=self.epoch + 1, loss=f"{float(logs['loss']):.3f}")

    def on_epoch_end(self, epoch, logs=None):
        values = "  ".join(f"{k} {float(v):.4f}" for k, v in sorted((logs or {}).items())
                           if k.endswith("loss"))
        line = f"epoch {epoch + 1}/{self.params.get('epochs')}: {values}"
        if self.show_bar:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def on_train_end(self, logs=None):
        if self.bar is not None:
            self.bar.close()
