"""The training checkpoint: weights, optimizer state and run state in one ``.npz``.

A checkpoint is written to a temporary name and renamed, so a run killed at
any moment leaves either the previous checkpoint or the new one. The run's
log (``log.csv``) is rewritten from the checkpoint's history after each
commit, so the two always agree, also after ``--resume``.
"""

import csv
import glob
import json
import os
import re

import numpy as np

from .atomic import atomic_path, process_running, writing
from .errors import UserError

CHECKPOINT = "checkpoint.npz"
#: The files a run writes in its output folder, whose atomic_path temporaries
#: ("<stem>.tmp<pid><ext>") a killed run can leave behind. Nothing else is touched:
#: the folder may hold the user's own files named like temporaries.
RUN_FILES = ("best.h5", "last.h5", "interrupted.h5", CHECKPOINT, "log.csv", "loss.png", "classes.txt",
             "demo_summary.json")
_TEMPORARY = re.compile(r"^(?P<stem>.+)\.tmp(?P<pid>\d+)(?P<ext>\.[^.]*)$")


def save_checkpoint(path, weights, optimizer_values, state):
    """Write ``weights`` and ``optimizer_values`` (lists of arrays) and ``state`` (a JSON dict).

    Args:
        path: the ``.npz`` file.
        weights: ``model.get_weights()``.
        optimizer_values: the optimizer's variables as arrays, in
            ``optimizer.variables`` order (the step count first).
        state: JSON-serialisable run state (epoch, history, classes, ...).
    """
    arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(weights)}
    arrays.update({f"o{i}": np.asarray(v) for i, v in enumerate(optimizer_values)})
    arrays["state"] = np.frombuffer(json.dumps(state).encode("utf8"), dtype=np.uint8)
    with writing(path), atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_checkpoint(path):
    """``(weights, optimizer_values, state)`` from :func:`save_checkpoint`'s file.

    Raises:
        UserError: the file is missing, truncated or not a checkpoint.
    """
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            state = json.loads(bytes(data["state"]).decode("utf8"))
            weights = [data[f"w{i}"] for i in range(sum(k.startswith("w") for k in data.files))]
            opt = [data[f"o{i}"] for i in range(sum(k.startswith("o") for k in data.files))]
    except FileNotFoundError:
        raise UserError(f"{path}: no checkpoint to resume from") from None
    except Exception as e:  # a truncated zip raises many types
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    return weights, opt, state


def remove_stale_temporaries(folder):
    """Delete the temporaries of :data:`RUN_FILES` that a killed run left in ``folder``.

    Only the names this library writes (``last.tmp<pid>.h5``, ...) whose
    process is gone: a run still writing keeps its files, and the user's own
    ``thesis.tmp2.tex`` is not ours.

    Returns:
        The removed names, sorted.
    """
    removed = []
    for path in glob.glob(os.path.join(glob.escape(os.fspath(folder)), "*.tmp*")):
        match = _TEMPORARY.match(os.path.basename(path))
        if (match and match["stem"] + match["ext"] in RUN_FILES and os.path.isfile(path)
                and not process_running(int(match["pid"]))):
            os.remove(path)
            removed.append(os.path.basename(path))
    return sorted(removed)


def write_log(history, path):
    """Write ``{metric: [value per epoch]}`` as ``log.csv`` (columns ``epoch`` and the metrics), atomically."""
    names = sorted(history)
    epochs = max((len(v) for v in history.values()), default=0)
    with writing(path), atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", *names])
        for epoch in range(epochs):
            writer.writerow([epoch, *(history[n][epoch] if epoch < len(history[n]) else ""
                                      for n in names)])
