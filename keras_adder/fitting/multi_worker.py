"""Make keras 3.15.1's `model.fit` work under `tf.distribute.MultiWorkerMirroredStrategy`.

With tensorflow 2.21.0 / keras 3.15.1 and two CPU workers, `model.fit` under
MultiWorkerMirroredStrategy fails at two points of keras/src/backend/tensorflow/trainer.py:

1. `TensorFlowTrainer._maybe_symbolic_build` hands the whole nested data batch to
   `strategy.reduce`, which accepts a single value, not a nest:
   "Attempt to convert a value ({'image': PerReplica...}) ... to a Tensor"
   (keras-team/keras#20329, keras-team/keras#20585).
   Fix: reduce the batch leaf by leaf.
2. `reduce_per_replica` reduces every logged value with `axis=0`, which fails for the
   scalar loss and metrics: "Invalid reduction dimension 0 for input with 0 dimensions"
   (tensorflow/tensorflow#72388).
   Fix: reduce 0-d values with `axis=None`.

`patch_keras_for_multi_worker()` wraps both functions; the wrappers change nothing
unless the strategy is a MultiWorkerMirroredStrategy, and the patch refuses keras
versions it was not tested on, because it replaces private keras functions.
"""

import keras
import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer

from keras_adder.core.errors import KerasAdderError

TESTED_KERAS_VERSIONS = ("3.15.1",)


def is_multi_worker(strategy):
    """Whether `strategy` is a MultiWorkerMirroredStrategy (workers act in lock-step)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def patch_keras_for_multi_worker():
    """Apply the two fixes above (once per process) or raise if keras is untested."""
    if keras.__version__ not in TESTED_KERAS_VERSIONS:
        raise KerasAdderError(
            f"--strategy multiworker relies on a fix for keras "
            f"{', '.join(TESTED_KERAS_VERSIONS)} (keras_adder/compat.py) and keras "
            f"{keras.__version__} is installed; check keras-team/keras#20329, #20585 and "
            f"tensorflow/tensorflow#72388, then test and extend TESTED_KERAS_VERSIONS"
        )
    if getattr(trainer, "_keras_adder_multi_worker_fix", False):
        return
    original_reduce = trainer.reduce_per_replica
    original_build = trainer.TensorFlowTrainer._maybe_symbolic_build

    def reduce_per_replica(values, strategy, reduction):
        if not is_multi_worker(strategy) or reduction not in ("auto", "mean"):
            return original_reduce(values, strategy, reduction)

        def reduce_one(value):
            if strategy.experimental_local_results(value)[0].shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return original_reduce(value, strategy, reduction)

        return tree.map_structure(reduce_one, values)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or not is_multi_worker(strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        # The build only needs one batch's shapes and dtypes; fit() resets the iterator.
        for _, _, batches in iterator:
            data_batch = tree.map_structure(
                lambda value: strategy.reduce("MEAN", value, axis=None)
                if isinstance(value, tf.distribute.DistributedValues) else value,
                next(batches),
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    trainer.reduce_per_replica = reduce_per_replica
    trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    trainer._keras_adder_multi_worker_fix = True
