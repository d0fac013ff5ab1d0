"""Data-parallel training on several devices and processes, with the engines Keras 3 has.

``TrainConfig(distribute="data-parallel")`` (``--distribute data-parallel``)
replicates the model on every device and splits each global batch of
``batch_size`` images between them; the gradients are averaged, so every
replica keeps the same weights.

* JAX: ``keras.distribution.DataParallel`` over every device of every
  process. With several processes, ``jax.distributed.initialize`` joins them
  first (what ``keras.distribution.initialize`` calls, here with the
  timeouts that make the survivors stop when a process dies). The step is
  one SPMD program over the global batch, so the loss is the loss of the
  whole global batch, as on one device.
* TensorFlow: ``tf.distribute.MirroredStrategy`` over the local GPUs (or the
  local logical CPUs when there is no GPU), in one process. Each replica
  computes the loss of its part of the batch (positives counted and, without
  ``per_image_mining``, negatives mined per replica) and the gradients are
  averaged. Several TensorFlow processes (``TF_CONFIG`` naming several
  workers) are refused: Keras 3.15's ``fit`` fails under
  ``tf.distribute.MultiWorkerMirroredStrategy`` (keras-team/keras#20585,
  reproduced here with TensorFlow 2.21).
* PyTorch: Keras 3.15 has no distribution for it; :func:`start` raises
  :class:`~ssd300.errors.UserError`.

With several processes, process ``p`` of ``n`` loads only the ``p``-th of
``n`` equal parts of each global batch (the same shuffling seed everywhere,
so the parts are disjoint and together are the batch a single process would
load), only process 0 writes files and prints, and a collective that fails
(a dead peer) stops the others with :class:`DistributedError`.

Where the processes come from (:func:`cluster_from_environment`), first
found wins, each value separately:

* the options ``coordinator``, ``num_processes``, ``process_id``;
* ``SSD300_COORDINATOR`` (``host:port`` of process 0),
  ``SSD300_NUM_PROCESSES``, ``SSD300_PROCESS_ID``;
* Keras's ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` (the first address),
  ``KERAS_DISTRIBUTION_NUM_PROCESSES``, ``KERAS_DISTRIBUTION_PROCESS_ID``;
* SLURM (inside ``srun``): ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` or
  ``SLURM_NTASKS``, and the first node of ``SLURM_STEP_NODELIST`` (or
  ``SLURM_JOB_NODELIST``) with port ``SSD300_COORDINATOR_PORT``, else
  ``61440 + SLURM_JOB_ID % 4096`` (JAX's own rule);
* Kubernetes indexed Jobs: ``JOB_COMPLETION_INDEX`` as the process id.
"""

import contextlib
import json
import os
import re
from dataclasses import dataclass

from .errors import UserError

#: The values of ``TrainConfig.distribute`` besides ``None``.
DISTRIBUTIONS = ("data-parallel",)
#: Seconds to wait for every process to join, and after which a silent process is declared dead.
DEFAULT_TIMEOUT = 120.0

NO_TORCH = ("Keras 3.15 has no distribution for the PyTorch backend (keras.distribution runs on JAX, "
            "tf.distribute on TensorFlow); run with KERAS_BACKEND=jax or KERAS_BACKEND=tensorflow")


class DistributedError(UserError):
    """A distributed run cannot start or go on (a process missing, dead or out of step)."""


@dataclass(frozen=True)
class Cluster:
    """The processes of a run, as this process sees them.

    Attributes:
        coordinator: ``host:port`` of process 0's coordination service, or
            ``None`` (one process).
        num_processes: processes in the run.
        process_id: this process's index, ``0 .. num_processes - 1``.
        source: where the values came from, for messages.
    """

    coordinator: str | None = None
    num_processes: int = 1
    process_id: int = 0
    source: str = "default"


def first_slurm_host(nodelist):
    """The first host of a SLURM node list: ``"gpu[003-008,011],cpu1"`` -> ``"gpu003"``.

    Args:
        nodelist: SLURM's compressed host list (``SLURM_STEP_NODELIST``).

    Returns:
        str, the host name.
    """
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):  # the first name ends at a comma outside brackets
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            end = i
            break
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split("[,-]", m.group(1))[0], nodelist[:end])


def _integer(value, name):
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be an integer, got {value!r}") from None


def cluster_from_environment(coordinator=None, num_processes=None, process_id=None, environ=None):
    """The :class:`Cluster` of this process, from the options and the environment.

    Args:
        coordinator, num_processes, process_id: the options (``None``: not
            given).
        environ: the environment (default ``os.environ``).

    Returns:
        :class:`Cluster`.

    Raises:
        UserError: a value is not an integer, the process id is out of range,
            or several processes lack a coordinator.
    """
    env = os.environ if environ is None else environ
    sources = []

    def pick(name, option, candidates):
        if option is not None:
            sources.append(f"{name} from the options")
            return option
        for var in candidates:
            if env.get(var):
                sources.append(f"{name} from {var}")
                return env[var]
        return None

    slurm = {}
    if "SLURM_PROCID" in env:
        slurm["id"] = "SLURM_PROCID"
        slurm["n"] = "SLURM_STEP_NUM_TASKS" if env.get("SLURM_STEP_NUM_TASKS") else "SLURM_NTASKS"
    coordinator = pick("coordinator", coordinator, ("SSD300_COORDINATOR",))
    if coordinator is None and env.get("KERAS_DISTRIBUTION_JOB_ADDRESSES"):
        coordinator = env["KERAS_DISTRIBUTION_JOB_ADDRESSES"].split(",")[0].strip()
        sources.append("coordinator from KERAS_DISTRIBUTION_JOB_ADDRESSES")
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if coordinator is None and slurm and nodelist and env.get("SLURM_JOB_ID"):
        port = env.get("SSD300_COORDINATOR_PORT") or 61440 + _integer(env["SLURM_JOB_ID"], "SLURM_JOB_ID") % 4096
        coordinator = f"{first_slurm_host(nodelist)}:{port}"
        sources.append("coordinator from the SLURM node list")
    count = pick("num_processes", num_processes,
                 ("SSD300_NUM_PROCESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES", slurm.get("n", "")))
    index = pick("process_id", process_id,
                 ("SSD300_PROCESS_ID", "KERAS_DISTRIBUTION_PROCESS_ID", slurm.get("id", ""),
                  "JOB_COMPLETION_INDEX"))
    count = 1 if count is None else _integer(count, "num-processes")
    index = 0 if index is None else _integer(index, "process-id")
    source = "; ".join(sources) or "default"
    if count < 1 or not 0 <= index < count:
        raise UserError(f"process id {index} is not in 0 .. {count - 1} ({source})")
    if count > 1 and not coordinator:
        raise UserError(f"{count} processes need the coordinator's address (host:port of process 0): "
                        f"--coordinator or SSD300_COORDINATOR ({source})")
    return Cluster(coordinator if count > 1 else None, count, index, source)


def tf_config_workers(environ=None):
    """``(number of workers, this worker's index)`` named by ``TF_CONFIG``, or ``(1, 0)``.

    Raises:
        UserError: ``TF_CONFIG`` is not JSON of tf.distribute's form.
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG")
    if not text:
        return 1, 0
    try:
        config = json.loads(text)
        workers = config.get("cluster", {}).get("worker", [])
        index = int(config.get("task", {}).get("index", 0)) if len(workers) > 1 else 0
    except (ValueError, AttributeError, TypeError) as e:
        raise UserError(f"TF_CONFIG is not a tf.distribute cluster description ({e})") from None
    return max(1, len(workers)), index


class DataParallelRun:
    """A started data-parallel run: its devices and processes, its scope, this process's data.

    Made by :func:`start`. Build, compile and fit the model inside
    :meth:`scope`, with datasets made with the arguments :meth:`shard` gives.

    Attributes:
        backend: ``"jax"`` or ``"tensorflow"``.
        replicas: model replicas over all processes (devices).
        num_processes, process_id: the run's processes and this one's index.
        engine: the ``keras.distribution.DataParallel`` or the
            ``tf.distribute.Strategy``.
        timeout: seconds (see :data:`DEFAULT_TIMEOUT`).
    """

    def __init__(self, backend, engine, replicas, num_processes, process_id, timeout):
        self.backend = backend
        self.engine = engine
        self.replicas = replicas
        self.num_processes = num_processes
        self.process_id = process_id
        self.timeout = timeout

    @property
    def is_chief(self):
        """Process 0: the one that writes files and prints."""
        return self.process_id == 0

    def scope(self):
        """The context in which variables are created replicated and ``fit`` runs distributed."""
        return self.engine.scope()

    def describe(self, batch_size):
        """One line: engine, replicas, processes and how ``batch_size`` is split."""
        name = type(self.engine).__name__
        return (f"{name} ({self.backend}) over {self.replicas} devices in {self.num_processes} "
                f"process{'es' if self.num_processes > 1 else ''}: global batch {batch_size}, "
                f"{batch_size // self.num_processes} loaded by each process, "
                f"{batch_size // self.replicas} per device")

    def check_batch(self, batch_size, num_keys, what):
        """Check that whole global batches of ``batch_size`` fit ``num_keys`` images and the devices.

        Raises:
            UserError: ``batch_size`` is not a multiple of the replicas, or
                there are fewer images than one batch.
        """
        if batch_size % self.replicas:
            raise UserError(f"batch-size {batch_size} does not split over {self.replicas} devices; "
                            f"give a multiple of {self.replicas} (it is the global batch)")
        if num_keys < batch_size:
            raise UserError(f"{num_keys} {what} images cannot fill one global batch of {batch_size}")

    def validation_batch(self, batch_size, num_keys):
        """The validation batch: ``batch_size``, or the most that ``num_keys`` fill on every device.

        Raises:
            UserError: fewer validation images than devices.
        """
        size = min(batch_size, num_keys // self.replicas * self.replicas)
        if size < 1:
            raise UserError(f"{num_keys} validation images cannot give one to each of {self.replicas} "
                            "devices; raise --val-fraction")
        return size

    def shard(self):
        """``SSDDataset`` arguments: whole batches, and this process's part of each."""
        return {"drop_last": True, "num_shards": self.num_processes, "shard_index": self.process_id}

    def agree(self, flag):
        """Process 0's ``flag``, on every process: one decision, so that all stop at the same step."""
        if self.num_processes == 1:
            return bool(flag)
        import numpy as np
        from jax.experimental import multihost_utils

        return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))

    def check_same(self, values, what):
        """Raise :class:`DistributedError` unless every process has the same integer ``values``."""
        if self.num_processes == 1:
            return
        import numpy as np
        from jax.experimental import multihost_utils

        mine = np.asarray(values, np.int64)
        every = np.asarray(multihost_utils.process_allgather(mine))
        if not (every == mine).all():
            raise DistributedError(f"{what} differ between processes: {every.tolist()}")

    def failure(self, error):
        """The :class:`DistributedError` that reports ``error`` raised by ``fit`` in a multi-process run."""
        first = (str(error).strip().splitlines() or [""])[0][:300]
        return DistributedError(
            f"process {self.process_id} of {self.num_processes} stopped: {type(error).__name__}: {first}\n"
            f"If another process died or hung, this follows from it (a hung process is declared dead "
            f"after {self.timeout:g} s): see that process's log for the cause.")


def start(config):
    """Start ``config.distribute``: join the processes and set up the replicas.

    Call it before any other Keras or JAX computation of the process (JAX's
    distributed runtime must start first).

    Args:
        config: a :class:`ssd300.training.TrainConfig` (``distribute``,
            ``coordinator``, ``num_processes``, ``process_id``,
            ``distribute_timeout``).

    Returns:
        :class:`DataParallelRun`, or ``None`` when ``config.distribute`` is
        ``None`` (a plain run on one device).

    Raises:
        UserError: the PyTorch backend, or a bad cluster description;
            :class:`DistributedError`: the processes did not all join.
    """
    if config.distribute is None:
        return None
    import keras

    backend = keras.backend.backend()
    timeout = float(config.distribute_timeout)
    if backend == "torch":
        raise UserError(f"--distribute: {NO_TORCH}")
    if backend == "jax":
        return _start_jax(config, timeout)
    if backend == "tensorflow":
        return _start_tensorflow(config, timeout)
    raise UserError(f"--distribute needs the JAX or TensorFlow backend, not {backend!r}")


def _start_jax(config, timeout):
    import jax
    import keras

    cluster = cluster_from_environment(config.coordinator, config.num_processes, config.process_id)
    if cluster.num_processes > 1 and not jax.distributed.is_initialized():
        try:
            jax.distributed.initialize(cluster.coordinator, cluster.num_processes, cluster.process_id,
                                       initialization_timeout=max(1, round(timeout)),
                                       heartbeat_timeout_seconds=max(1, round(timeout)))
        except Exception as e:  # jaxlib raises several types; the message says what went wrong
            raise DistributedError(
                f"process {cluster.process_id} of {cluster.num_processes} could not join the coordinator "
                f"{cluster.coordinator} within {timeout:g} s ({cluster.source}): "
                f"{(str(e).strip().splitlines() or [''])[0][:300]}") from None
    if jax.process_count() != cluster.num_processes:
        raise DistributedError(f"JAX runs {jax.process_count()} processes, the run names "
                               f"{cluster.num_processes} ({cluster.source})")
    devices = keras.distribution.list_devices()
    # Each process loads its own part of every batch (SSDDataset's shards);
    # Keras's auto-sharding accepts only a tf.data.Dataset.
    engine = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    return DataParallelRun("jax", engine, len(devices), jax.process_count(), jax.process_index(), timeout)


def _start_tensorflow(config, timeout):
    import tensorflow as tf

    workers, _ = tf_config_workers()
    cluster = cluster_from_environment(config.coordinator, config.num_processes, config.process_id)
    if workers > 1 or cluster.num_processes > 1:
        raise UserError(f"{max(workers, cluster.num_processes)} processes on TensorFlow: Keras 3.15's fit "
                        "does not work with tf.distribute.MultiWorkerMirroredStrategy "
                        "(keras-team/keras#20585); use KERAS_BACKEND=jax for several processes, or one "
                        "TensorFlow process per machine")
    devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices)
    return DataParallelRun("tensorflow", strategy, strategy.num_replicas_in_sync, 1, 0, timeout)


def scope(run):
    """``run.scope()``, or a context that does nothing for ``run`` ``None`` (a plain run)."""
    return contextlib.nullcontext() if run is None else run.scope()
