"""Which devices and processes train: the tf.distribute strategy, and how the
processes of a multi-worker run agree and share the writing.

`model.fit` does the distributing; this module only picks the strategy, decides who
writes (the chief) and keeps the workers in step where they must take the same path.
"""

import json
import os

import tensorflow as tf

from keras_adder.compat import is_multi_worker, patch_keras_for_multi_worker
from keras_adder.constants import STRATEGIES
from keras_adder.errors import KerasAdderError


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
    """Split the CPU into `count` logical devices; return their names."""
    if count < 1:
        raise KerasAdderError(f"--cpu-replicas {count} must be at least 1")
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    return [device.name for device in tf.config.list_logical_devices("CPU")]


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
