"""Keras callbacks of the training run: checkpoints, NaN, time and Ctrl-C guards, a progress bar."""

import math
import os
import time

import keras
import numpy as np

from .atomic import writing
from .checkpoint import CHECKPOINT, save_checkpoint, write_log
from .ctrl_c import ctrl_c_calls
from .visualize import plot_history
from .weights import save_weights_by_name

#: Keys of the run state that describe this process's run, not its last saved epoch: never
#: written to the checkpoint. ``running_epoch``: the epoch in progress (0-based); ``cut``:
#: ``{"epoch", "steps"}`` of an epoch stopped part-way by :class:`TimeLimit`; ``moved``: the
#: dataset paths that changed on ``--resume`` (``ssd300.training.read_resume_state``).
TRANSIENT = ("running_epoch", "cut", "moved")


def save_weights(model, path):
    """:func:`~ssd300.weights.save_weights_by_name`, an ``OSError`` reported as a ``UserError`` naming ``path``."""
    with writing(path):
        save_weights_by_name(model, path)


class Checkpointer(keras.callbacks.Callback):
    """After each whole epoch: ``best.h5``, ``checkpoint.npz``, then ``log.csv``, ``loss.png`` and ``last.h5``.

    ``checkpoint.npz`` is the commit point: ``state`` (``epoch``,
    ``history``, ``best``) takes the new epoch only once it is written, and
    what comes after it is redone by :meth:`finish` when a Ctrl-C
    cuts it short, so ``last.h5`` and the log never lag, nor lead, the
    checkpoint (``best.h5``, written first, may hold the epoch being saved:
    a resumed run recomputes that epoch exactly). The log is written from the
    history saved in the checkpoint, so a run killed in between never logs an
    epoch twice. An epoch cut by the time limit or a non-finite loss
    (``state["cut"]``, ``state["nan"]``) is not saved.

    Args:
        out: the output folder.
        state: the run state (a dict), updated in place: ``epoch``,
            ``history``, ``best`` (those of the last saved epoch), ``running_epoch``.
        write: write the files (``False`` on the processes other than 0 of
            a distributed run: they keep only ``state``).
    """

    def __init__(self, out, state, write=True):
        super().__init__()
        self.out = out
        self.state = state
        self.write = write
        self.pending = False  # the checkpoint is committed; log.csv, loss.png, last.h5 not yet

    def on_epoch_begin(self, epoch, logs=None):
        self.state["running_epoch"] = epoch

    def on_epoch_end(self, epoch, logs=None):
        state = self.state
        if state.get("nan") or state.get("cut"):
            return  # keep the last whole epoch's files
        logs = logs or {}
        # The new state is applied once the checkpoint holds it: a Ctrl-C before that leaves
        # ``state`` describing the files on disk.
        history = {key: list(values) for key, values in state.get("history", {}).items()}
        for key, value in logs.items():
            history.setdefault(key, []).append(float(value))
        new = {"history": history, "epoch": epoch + 1}
        val = logs.get("val_loss", logs.get("loss"))
        if val is not None and np.isfinite(val) and val < state.get("best", math.inf):
            new["best"] = float(val)
            if self.write:
                save_weights(self.model, os.path.join(self.out, "best.h5"))
        if self.write:
            saved = {key: value for key, value in state.items() if key not in TRANSIENT}
            save_checkpoint(os.path.join(self.out, CHECKPOINT), self.model.get_weights(),
                            [np.asarray(v) for v in self.model.optimizer.variables], {**saved, **new})
        state.update(new)
        self.pending = True
        self.finish()

    def finish(self):
        """Write what follows a committed checkpoint (``log.csv``, ``loss.png``, ``last.h5``), if still due.

        Call it after a ``KeyboardInterrupt`` out of ``fit``: the model still
        holds the checkpoint's weights while this is due (no step ran since).
        """
        if self.pending and self.write:
            write_log(self.state["history"], os.path.join(self.out, "log.csv"))
            png = os.path.join(self.out, "loss.png")
            with writing(png):
                plot_history(self.state["history"], png)
            save_weights(self.model, os.path.join(self.out, "last.h5"))
        self.pending = False


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


class TimeLimitReached(Exception):
    """Raised by :class:`TimeLimit` as the validation of a cut epoch begins; ``fit``'s caller catches it."""


class TimeLimit(keras.callbacks.Callback):
    """Stop training (at the end of the current batch) after ``minutes``.

    An epoch stopped part-way is marked ``state["cut"] = {"epoch": N
    (1-based), "steps": M}`` so that :class:`Checkpointer` does not save it as
    a whole one, and a resumed run redoes it from its start. Keras would
    still validate it, which can take minutes past the limit for a loss that
    is thrown away, so its validation raises :class:`TimeLimitReached`
    instead: the caller of ``fit`` catches it and ends the callbacks
    (``on_train_end``), which Keras skips when ``fit`` raises.

    Args:
        minutes: the limit.
        state: the run state (a dict) shared with :class:`Checkpointer`.
        agree: ``agree(late) -> bool``, the decision every process of a
            distributed run takes (``DataParallelRun.agree``), so that
            all stop at the same step; ``None``: this process's clock.
    """

    def __init__(self, minutes, state, agree=None):
        super().__init__()
        self.minutes = minutes
        self.state = state
        self.agree = agree
        self.epoch = 0

    def on_train_begin(self, logs=None):
        self.deadline = time.monotonic() + 60 * self.minutes

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        late = time.monotonic() > self.deadline
        if self.agree(late) if self.agree else late:
            self.model.stop_training = True
            steps = self.params.get("steps")
            if steps is None or batch + 1 < steps:  # the epoch's last step completes it
                self.state["cut"] = {"epoch": self.epoch + 1, "steps": batch + 1}

    def on_test_begin(self, logs=None):
        if self.state.get("cut"):  # every process of a distributed run agreed on the cut
            raise TimeLimitReached(f"time limit reached in epoch {self.state['cut']['epoch']}")


class StopOnCtrlC(keras.callbacks.Callback):
    """Ctrl-C stops training at the end of the step in progress; a second Ctrl-C stops it at once.

    Python would raise ``KeyboardInterrupt`` wherever ``fit`` is when SIGINT
    comes, which can be inside Keras's or TensorFlow's own code (an iterator
    half made, a variable half assigned), and such a run has crashed on its
    way out (SIGSEGV). Inside :meth:`installed`, the first Ctrl-C only asks;
    this callback raises ``KeyboardInterrupt`` at the next boundary Keras
    calls it at (a training or validation step's end, an epoch's end once
    the callbacks before it have saved the epoch), and ``fit``'s caller
    handles it as any Ctrl-C. Put it last among ``fit``'s callbacks. A
    second Ctrl-C raises at once, for a step that hangs on its data.

    Args:
        agree: ``agree(flag) -> bool``, the decision every process of a
            distributed run takes (``DataParallelRun.agree``: process 0's
            Ctrl-C), so that all stop at the same step; ``None``: this
            process's Ctrl-C.
    """

    def __init__(self, agree=None):
        super().__init__()
        self.agree = agree
        self.requested = False

    def installed(self):
        """A context manager: Ctrl-C inside it is a request (see :func:`~ssd300.ctrl_c.ctrl_c_calls`)."""
        return ctrl_c_calls(self.request)

    def request(self):
        """The SIGINT handler: ask to stop (and say so), or, asked already, stop at once."""
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        try:  # not print: the handler may run while the progress bar is mid-write
            os.write(2, b"\nCtrl-C: stopping at the end of this step (press it again to stop at once)\n")
        except OSError:
            pass

    def _stop_if_asked(self):
        if self.agree(self.requested) if self.agree else self.requested:
            raise KeyboardInterrupt

    def on_train_batch_end(self, batch, logs=None):
        self._stop_if_asked()

    def on_test_batch_end(self, batch, logs=None):
        self._stop_if_asked()

    def on_epoch_end(self, epoch, logs=None):
        # After the Checkpointer (this callback comes last): the epoch is saved. After the
        # last epoch, the run is done.
        if epoch + 1 < (self.params.get("epochs") or math.inf):
            self._stop_if_asked()


class ProgressBar(keras.callbacks.Callback):
    """One bar for the whole run (steps, rate, ETA) and a line per epoch.

    Args:
        initial_epoch: the epoch the run starts from (after ``--resume``).
        bar: show the bar; ``False`` prints the epoch lines only.
        state: the run state, read for ``cut`` (an epoch stopped by :class:`TimeLimit`).
    """

    def __init__(self, initial_epoch=0, bar=True, state=None):
        super().__init__()
        self.initial_epoch = initial_epoch
        self.show_bar = bar
        self.state = state if state is not None else {}
        self.bar = None
        self.cut_reported = False

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
        cut = self.state.get("cut")
        if cut:
            self._write_cut(cut)
            return
        values = "  ".join(f"{k} {float(v):.4f}" for k, v in sorted((logs or {}).items())
                           if k.endswith("loss"))
        self._write(f"epoch {epoch + 1}/{self.params.get('epochs')}: {values}")

    def on_train_end(self, logs=None):
        cut = self.state.get("cut")
        if cut and not self.cut_reported:  # TimeLimitReached skipped the epoch's end
            self._write_cut(cut)
        self.close()

    def close(self):
        """End the bar's line (again: a no-op)."""
        if self.bar is not None:
            self.bar.close()

    def _write_cut(self, cut):
        self._write(f"epoch {cut['epoch']}/{self.params.get('epochs')}: stopped by the time limit after "
                    f"{cut['steps']} step{'s' * (cut['steps'] != 1)}, not saved")
        self.cut_reported = True

    def _write(self, line):
        if self.show_bar:
            self.bar.write(line)
        else:
            print(line, flush=True)
