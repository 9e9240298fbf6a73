"""Which devices and processes train: the tf.distribute strategy, and how the
processes of a multi-worker run agree and share the writing.

`model.fit` does the distributing; this module only picks the strategy, decides who
writes (the chief) and keeps the workers in step where they must take the same path.
"""

import json
import os

import keras
import tensorflow as tf

from keras_adder.core.constants import STRATEGIES
from keras_adder.core.errors import KerasAdderError
from keras_adder.fitting.multi_worker import (
    is_multi_worker,
    patch_keras_for_multi_worker,
)


def choose_strategy(name="auto", cpu_replicas=None):
    """The tf.distribute strategy for `--strategy` (see STRATEGIES).

    "auto" mirrors over all GPUs when there are several, else uses the default one;
    "mirrored" mirrors over all GPUs, or over `cpu_replicas` logical CPU devices (the
    same code path as several GPUs, on a machine without any); "multiworker" reads the
    cluster from TF_CONFIG. It must run before TensorFlow executes anything: both
    MultiWorkerMirroredStrategy and logical devices are fixed at start-up.
    """
    if name not in STRATEGIES:
        raise KerasAdderError(f"unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})")
    if cpu_replicas is not None and name != "mirrored":
        raise KerasAdderError(f"--cpu-replicas works with --strategy mirrored, not {name}")
    if name == "multiworker":
        check_tf_config()
        patch_keras_for_multi_worker()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_replicas is not None:
        return tf.distribute.MirroredStrategy(split_cpu(cpu_replicas))
    if name == "mirrored" or len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def split_cpu(count):
    """Split the CPU into `count` logical devices; return their names.

    TensorFlow fixes its logical devices when it first runs an op; after that only
    the split it started with can be had (e.g. a second run in the same process).
    """
    if count < 1:
        raise KerasAdderError(f"--cpu-replicas {count} must be at least 1")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError:  # "Virtual devices cannot be modified after being initialized"
        pass
    names = [device.name for device in tf.config.list_logical_devices("CPU")]
    if len(names) != count:
        raise KerasAdderError(
            f"--cpu-replicas {count}: TensorFlow already runs in this process with "
            f"{len(names)} CPU device(s), and it fixes them when it starts; split the CPU "
            f"in a new process, before any TensorFlow op")
    return names


def synchronize_batch_norm(model, strategy):
    """Under several replicas, make BatchNormalization use the global batch's statistics.

    Keras 3 keeps BatchNorm's moving mean and variance with aggregation "none": each
    replica updates its own copy from its own share of the batch, the copies drift
    apart, and a saved or exported model holds replica 0's only. A share that is empty
    (a last batch smaller than the replica count) even turns that replica's copy into
    NaN. Synchronized, every replica normalises with the statistics of the whole
    global batch, the copies stay equal, and N replicas train the model that one
    device would with the same global batch. One device is left untouched.
    """
    if strategy.num_replicas_in_sync > 1:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
    return model


def check_batch_split(strategy, batch_size, examples):
    """Refuse a first batch that does not split evenly across the replicas.

    Keras 3.15.1's `fit` builds the model from the first batch averaged across the
    replicas, which fails on unequal shares with an obscure "AddN ... must have the
    same size and shape". Later batches may be unequal (the last one of an epoch).
    """
    replicas = strategy.num_replicas_in_sync
    first = min(batch_size, examples)
    if first % replicas:
        what = "batch size" if first == batch_size else "number of training images"
        raise KerasAdderError(
            f"{what} {first} does not split evenly across {replicas} replicas (the batch "
            f"is global: each replica gets an equal share); choose a multiple of {replicas}")


def check_tf_config():
    """Fail with a clear message before TensorFlow misreads a bad TF_CONFIG."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise KerasAdderError("--strategy multiworker needs the TF_CONFIG environment "
                              "variable (cluster and task of this worker; see --help)")
    expected = ('expected {"cluster": {"worker": ["host:port", ...]}, '
                '"task": {"type": "worker", "index": N}}')
    try:
        config = json.loads(text)
    except ValueError as error:
        raise KerasAdderError(f"TF_CONFIG is not JSON ({error}); {expected}") from None
    try:
        workers = config["cluster"]["worker"]
        task_type, task_index = config["task"]["type"], config["task"]["index"]
    except (TypeError, KeyError) as error:
        raise KerasAdderError(f"TF_CONFIG has no {error} entry; {expected}") from None
    members = config["cluster"].get(task_type, [])
    if not isinstance(task_index, int) or not 0 <= task_index < len(members):
        raise KerasAdderError(f"TF_CONFIG task {task_type} {task_index} is not in its "
                              f"cluster ({len(workers)} workers)")


def is_chief(strategy):
    """Whether this process writes the run's checkpoints, exports and metrics.

    As in the TF multi-worker guide: the "chief" task, else worker 0, else (one machine)
    the only process.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def worker_index(strategy):
    return strategy.cluster_resolver.task_id


def gather_from_workers(strategy, values):
    """Each worker's int `values`, as rows [workers, len(values)] (a collective op)."""
    local = tf.constant([values], tf.int64)
    return strategy.gather(strategy.run(lambda: tf.identity(local)), axis=0).numpy()


def agree(strategy, finished, start_epoch):
    """All workers must take the same path: finished if any says so, one start epoch."""
    if not is_multi_worker(strategy):
        return finished, start_epoch
    everyone = gather_from_workers(strategy, [int(finished), start_epoch])
    finished, latest, earliest = everyone[:, 0].max(), everyone[:, 1].max(), everyone[:, 1].min()
    if not finished and latest != earliest:
        raise KerasAdderError(
            f"the workers' backups are at different epochs ({earliest} to {latest}); "
            f"a worker was stopped during a backup: start a new --run-dir"
        )
    return bool(finished), int(latest)


def wait_for_everyone(strategy):
    """A barrier: a worker that exits while the chief still works is reported as crashed."""
    if is_multi_worker(strategy):
        gather_from_workers(strategy, [0])
