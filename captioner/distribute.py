"""Data parallelism on the engines Keras already has: `keras.distribution.DataParallel` on JAX (the devices of one
process, or of many processes on many hosts joined by `jax.distributed`), `tf.distribute.MirroredStrategy` on
TensorFlow (the devices of one host).

Every replica holds the whole model and a slice of each global batch; `train.batch_size` is the global batch, split
evenly over all devices of all processes, so a run means the same thing on 1 device or 16. Each process reads only
its own rows of every global batch (`InputShard`); process 0 alone writes the run directory.

`ParallelConfig` is resolved once, from the command line and the standard variables `KERAS_DISTRIBUTION_JOB_ADDRESSES`,
`KERAS_DISTRIBUTION_NUM_PROCESSES` and `KERAS_DISTRIBUTION_PROCESS_ID`; `prepare` runs before Keras is imported (JAX
reads its device count once), `start` after, before any computation. Keras is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from captioner.errors import CaptionerError

ADDRESSES_ENV = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
PROCESSES_ENV = "KERAS_DISTRIBUTION_NUM_PROCESSES"
PROCESS_ID_ENV = "KERAS_DISTRIBUTION_PROCESS_ID"
HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"
ADDRESS = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")


@dataclass(frozen=True)
class ParallelConfig:
    """How one training process takes part in data-parallel training.

    devices: local devices this process trains on: the first N GPUs, or on a machine without one the CPU split
        into N devices (for trying things out; a CPU has one pool of cores). 1: no data parallelism in this process.
    coordinator: HOST:PORT where process 0 listens (several processes only).
    num_processes: processes in the job, one per host as a rule (JAX backend).
    process_id: this process, 0 to num_processes - 1; 0 writes the run directory.
    join_timeout: seconds a process waits for all the others to join before it gives up with one line.
    """

    devices: int = 1
    coordinator: str = ""
    num_processes: int = 1
    process_id: int = 0
    join_timeout: int = 30

    @property
    def enabled(self) -> bool:
        return self.num_processes > 1 or self.devices > 1


def _integer(text: str | int | None, name: str) -> int | None:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise CaptionerError(f"{name} must be a whole number (got '{text}')") from None


def resolve(
    devices: int | None = None,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    join_timeout: int = 30,
    environ: Mapping[str, str] | None = None,
) -> ParallelConfig:
    """The flags, else the KERAS_DISTRIBUTION_* variables, checked: every problem is one line naming the setting."""
    environ = os.environ if environ is None else environ
    processes_name = "--num-processes" if num_processes is not None else PROCESSES_ENV
    id_name = "--process-id" if process_id is not None else PROCESS_ID_ENV
    address_name = "--coordinator" if coordinator else ADDRESSES_ENV
    processes = num_processes if num_processes is not None else _integer(environ.get(PROCESSES_ENV), PROCESSES_ENV)
    pid = process_id if process_id is not None else _integer(environ.get(PROCESS_ID_ENV), PROCESS_ID_ENV)
    address = coordinator or environ.get(ADDRESSES_ENV, "").split(",")[0].strip()
    processes = 1 if processes is None else processes
    if processes < 1:
        raise CaptionerError(f"{processes_name} must be at least 1 (got {processes})")
    if devices is not None and devices < 1:
        raise CaptionerError(f"--devices must be at least 1 (got {devices})")
    if join_timeout < 1:
        raise CaptionerError(f"--join-timeout must be at least 1 second (got {join_timeout})")
    if processes == 1:
        if pid not in (None, 0):
            raise CaptionerError(
                f"{id_name}={pid} is outside 0..0: the job has one process; set {processes_name} to the number of "
                f"processes"
            )
        return ParallelConfig(devices=devices or 1, join_timeout=join_timeout)
    if pid is None:
        raise CaptionerError(
            f"{processes_name}={processes} needs this process's id: set {PROCESS_ID_ENV} (or --process-id) to "
            f"0..{processes - 1}"
        )
    if not 0 <= pid < processes:
        raise CaptionerError(
            f"{id_name}={pid} is outside 0..{processes - 1} ({processes_name}={processes}); "
            f"give each process its own id, 0 for the coordinator"
        )
    if not address:
        raise CaptionerError(
            f"{processes_name}={processes} needs the coordinator's address: set {ADDRESSES_ENV} (or --coordinator) "
            f"to HOST:PORT of process 0, e.g. 10.0.0.1:1234"
        )
    found = ADDRESS.match(address)
    if not found or not 0 < int(found.group(1)) < 65536:
        raise CaptionerError(
            f"{address_name} '{address}' is not HOST:PORT (expected process 0's address and a free port, e.g. "
            f"10.0.0.1:1234)"
        )
    return ParallelConfig(
        devices=devices or 1, coordinator=address, num_processes=processes, process_id=pid, join_timeout=join_timeout
    )


def prepare(config: ParallelConfig, environ: dict | None = None) -> None:
    """Before Keras is imported: on JAX, ask XLA for `config.devices` CPU devices (used where there is no GPU;
    JAX reads the flag once, when it starts). TensorFlow splits its CPU in `start`."""
    environ = os.environ if environ is None else environ
    if config.devices > 1:
        flags = re.sub(rf"{HOST_DEVICES_FLAG}=\d+", "", environ.get("XLA_FLAGS", "")).strip()
        environ["XLA_FLAGS"] = f"{flags} {HOST_DEVICES_FLAG}={config.devices}".strip()


def share(paths, index: int, count: int) -> list[str]:
    """The `index`-th (from 0) of `count` shares of the distinct `paths`: every count-th of the sorted list. One rule
    for `features --shard I/N` workers and for training processes filling a cache, so they split its images alike."""
    return sorted(set(paths))[index::count]


class EpochClock:
    """The epoch training is in (the training loop sets `epoch` as each begins): what orders a shuffled epoch."""

    def __init__(self, epoch: int = 0):
        self.epoch = epoch


@dataclass(frozen=True)
class InputShard:
    """Which rows of each global batch this process reads, in which order: rows [index * n, (index + 1) * n) of every
    batch of `count * n` (n = batch_size / count), the batches shuffled by (seed, `clock.epoch`). With more than one
    replica every batch is whole (`drop_remainder`: the last partial batch of an epoch is left out, as a batch must
    split evenly over the devices). `barrier(name)` waits for every process (a no-op in one)."""

    index: int = 0
    count: int = 1
    drop_remainder: bool = False
    barrier: Callable[[str], None] = field(default=lambda name: None, compare=False)
    clock: EpochClock = field(default_factory=EpochClock, compare=False)

    def rows(self, batch_size: int) -> tuple[int, int]:
        """(start, stop) of this process's rows in a global batch of `batch_size`."""
        size = batch_size // self.count
        return self.index * size, (self.index + 1) * size


class Parallel:
    """The started data parallelism of one process (`start`): its scope, its rows of the input, who writes."""

    def __init__(
        self,
        config: ParallelConfig,
        replicas: int = 1,
        device_names: tuple[str, ...] = (),
        backend: str = "",
        engine=None,
    ):
        self.config = config
        self.replicas = replicas  # model replicas over all processes: the devices the global batch is split over
        self.device_names = device_names
        self.backend = backend
        self._engine = engine  # tf.distribute.MirroredStrategy or keras.distribution.DataParallel; None: one device

    @property
    def processes(self) -> int:
        return self.config.num_processes

    @property
    def writer(self) -> bool:
        """Process 0 writes the run directory, the history, the backups and the log; the others only train."""
        return self.config.process_id == 0

    def scope(self) -> contextlib.AbstractContextManager:
        """Where the model is built, compiled and fitted."""
        return self._engine.scope() if self._engine is not None else contextlib.nullcontext()

    def barrier(self, name: str) -> None:
        if self.processes > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)

    def same_everywhere(self, what: str, value: int) -> None:
        """Several processes: fail in every process, with one line, when they do not all see the same `value`."""
        if self.processes > 1:
            import numpy as np
            from jax.experimental import multihost_utils

            try:
                multihost_utils.assert_equal(np.asarray(value), f"processes differ on {what}")
            except AssertionError:
                raise CaptionerError(
                    f"the {self.processes} processes see a different {what} (this one: {value}); the run directory "
                    f"must be one folder every host reads (process 0 writes it, the others restore its backup "
                    f"on a resume): put it on a shared filesystem"
                ) from None

    def shard(self) -> InputShard:
        return InputShard(
            self.config.process_id, self.processes, drop_remainder=self.replicas > 1, barrier=self.barrier
        )

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.replicas:
            raise CaptionerError(
                f"--batch-size {batch_size} does not split over {self.replicas} devices; the batch size is the "
                f"global batch: use a multiple of {self.replicas}, e.g. "
                f"{batch_size + self.replicas - batch_size % self.replicas}"
            )

    def describe(self) -> dict:
        """For metrics.json: what the run trained on."""
        return {"replicas": self.replicas, "processes": self.processes, "devices": list(self.device_names)}


def start(config: ParallelConfig) -> Parallel:
    """Join the job (several processes: within `config.join_timeout` seconds, else one line) and set up the devices."""
    import keras

    backend = keras.backend.backend()
    if not config.enabled:
        return Parallel(config, backend=backend)
    if backend == "jax":
        return _start_jax(config)
    if backend == "tensorflow":
        return _start_tensorflow(config)
    raise CaptionerError(
        f"data parallelism runs on the jax or tensorflow backend, not {backend}; set KERAS_BACKEND=jax"
    )


def _start_jax(config: ParallelConfig) -> Parallel:
    import jax
    import keras

    if config.num_processes > 1:
        try:
            jax.distributed.initialize(
                config.coordinator, config.num_processes, config.process_id, initialization_timeout=config.join_timeout
            )
        except Exception as exc:  # a coordinator that is not there, a process that never joined, a port taken
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise CaptionerError(
                f"process {config.process_id} of {config.num_processes} could not form the job with the coordinator at "
                f"{config.coordinator} within {config.join_timeout} s ({first[:160]}); check {ADDRESSES_ENV} (process "
                f"0's "
                f"HOST:PORT, reachable from every host) and that all {config.num_processes} processes were started"
            ) from None
    local = jax.local_devices()
    if len(local) < config.devices:
        raise CaptionerError(
            f"--devices {config.devices}: this process has {len(local)} device(s) "
            f"({', '.join(str(d) for d in local)}); use at most {len(local)}"
        )
    per_process: dict[int, list] = {}
    for device in jax.devices():
        per_process.setdefault(device.process_index, []).append(device)
    chosen = [d for index in sorted(per_process) for d in per_process[index][: config.devices]]
    names = tuple(f"{d.platform}:{d.id}" for d in chosen)
    # each process reads its rows
    distribution = keras.distribution.DataParallel(devices=list(names), auto_shard_dataset=False)
    return Parallel(config, len(chosen), names, "jax", distribution)


def _start_tensorflow(config: ParallelConfig) -> Parallel:
    import tensorflow as tf

    if config.num_processes > 1:
        raise CaptionerError(
            "several processes train on the JAX backend only (KERAS_BACKEND=jax): TensorFlow's "
            "MultiWorkerMirroredStrategy does not work with Keras 3 (keras#20585); on TensorFlow use --devices "
            "on one host"
        )
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if len(gpus) < config.devices:
            raise CaptionerError(
                f"--devices {config.devices}: this host has {len(gpus)} GPU(s); use at most {len(gpus)}"
            )
        names = tuple(f"/gpu:{i}" for i in range(config.devices))
    else:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * config.devices)
        except RuntimeError:  # TensorFlow already ran something: the split must come first
            if len(tf.config.list_logical_devices("CPU")) != config.devices:
                raise CaptionerError(
                    f"--devices {config.devices}: TensorFlow's CPU was already set up in this process; "
                    f"start a new process"
                ) from None
        names = tuple(f"/cpu:{i}" for i in range(config.devices))
    return Parallel(config, len(names), names, "tensorflow", tf.distribute.MirroredStrategy(devices=list(names)))


def global_sum(value):
    """`value` summed over the replicas of a TensorFlow `MirroredStrategy` step (inside its replica context); as it
    is everywhere else (one device, or JAX, whose step sees the global batch)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            return context.all_reduce(tf.distribute.ReduceOp.SUM, value)
    return value


def sync_batch_norm() -> bool:
    """`synchronized` for a trained BatchNormalization: one statistic over all devices' rows under TensorFlow's
    MirroredStrategy (JAX's step sees the global batch already, and Keras accepts the flag on TensorFlow only: a
    model built with it on JAX would not load, so it is decided by the backend that builds the layer)."""
    import keras

    return keras.backend.backend() == "tensorflow"
