"""Every setting of a training run, defined once.

A `Recipe` is plain, frozen data in the spirit of nanoGPT's config: the train command
derives its flags from these fields, config.json and metrics.json store them, and a
resumed run must match them exactly. Adding a setting is one field here (with its
help text) and its use in the training code.
"""

import dataclasses
import math
from dataclasses import dataclass, field

from keras_adder.core.constants import ARCHITECTURES, TRAIN_SIZE, VALIDATION_SIZE
from keras_adder.core.errors import KerasAdderError

MAX_SEED = 2**32 - 1  # keras.utils.set_random_seed takes an unsigned 32-bit seed


def _setting(default, help):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Recipe:
    arch: str = _setting("compact", f"architecture: {' or '.join(ARCHITECTURES)}")
    epochs: int = _setting(36, "training epochs")
    batch_size: int = _setting(128, "global batch size, split across replicas")
    learning_rate: float = _setting(3e-3, "peak learning rate of the warm-up + cosine schedule")
    warmup_fraction: float = _setting(
        0.05, "share of the training steps spent warming up, at most one epoch")
    weight_decay: float = _setting(
        0.05, "AdamW weight decay: each step shrinks the weights by rate x decay")
    digit_loss_weight: float = _setting(1.0, "weight of the digit head's loss")
    sum_loss_weight: float = _setting(1.0, "weight of the sum head's loss")
    augment: bool = _setting(True, "random shifts, rotations and zooms of training images")
    dropout: float | None = _setting(
        None, "dropout rate of the compact model, whose own is 0.1 (the reference has none)")
    seed: int = _setting(1337, "seed for weights, data order, numbers and augmentation "
                               f"(0-{MAX_SEED})")
    train_examples: int | None = _setting(
        None, "train on the first N of the 55,000 training images (quick trials)")
    deterministic: bool = _setting(
        True, "TF op determinism: the same seed on the same machine gives the same run")

    def __post_init__(self):
        problems = [message for valid, message in self._rules() if not valid]
        if problems:
            raise KerasAdderError("; ".join(problems))

    def _rules(self):
        fit_size = TRAIN_SIZE - VALIDATION_SIZE
        finite = lambda x: isinstance(x, (int, float)) and math.isfinite(x)  # noqa: E731
        return [
            (self.arch in ARCHITECTURES,
             f"unknown architecture {self.arch!r} (choose from {', '.join(ARCHITECTURES)})"),
            (self.epochs >= 1, f"epochs {self.epochs} must be at least 1"),
            (self.batch_size >= 1, f"batch size {self.batch_size} must be at least 1"),
            (finite(self.learning_rate) and self.learning_rate > 0,
             f"learning rate {self.learning_rate} must be a positive number"),
            (finite(self.warmup_fraction) and 0 <= self.warmup_fraction < 1,
             f"warm-up fraction {self.warmup_fraction} must be at least 0 and below 1"),
            (self.dropout is None or (finite(self.dropout) and 0 <= self.dropout < 1),
             f"dropout {self.dropout} must be at least 0 and below 1"),
            (self.dropout in (None, 0) or self.arch == "compact",
             f"dropout {self.dropout} needs the compact model (the reference port has none)"),
            (finite(self.weight_decay) and self.weight_decay >= 0,
             f"weight decay {self.weight_decay} must be a number of at least 0"),
            (all(finite(w) and w >= 0 for w in self.loss_weights.values())
             and any(self.loss_weights.values()),
             "loss weights must be numbers of at least 0, not both 0"),
            (0 <= self.seed <= MAX_SEED, f"seed {self.seed} is outside 0-{MAX_SEED}"),
            (self.train_examples is None or 1 <= self.train_examples <= fit_size,
             f"train examples {self.train_examples} is outside 1-{fit_size:,}"),
        ]

    @property
    def loss_weights(self):
        return {"digit": self.digit_loss_weight, "sum": self.sum_loss_weight}

    def warmup_steps(self, steps_per_epoch):
        """Warm-up scales with the run's length, so a short run still decays to ~0."""
        total = self.epochs * steps_per_epoch
        return min(round(self.warmup_fraction * total), steps_per_epoch)

    def as_dict(self):
        return dataclasses.asdict(self)


# Named recipes; flags override single values of the chosen one.
RECIPES = {
    "default": Recipe(),
    # Four epochs at twice the peak rate, without augmentation or dropout and with almost
    # no weight decay: a run this short is still fitting its training set, so it needs no
    # regularisation. Each value was chosen on validation by a rule written before its
    # runs (docs/performance.md).
    "fast": Recipe(epochs=4, learning_rate=6e-3, weight_decay=1e-4, augment=False,
                   dropout=0.0),
}


def settings():
    """(name, default, help, type) of every Recipe field, for the command line."""
    return [(f.name, f.default, f.metadata["help"], f.type) for f in dataclasses.fields(Recipe)]


def make_recipe(name="default", **overrides):
    """The named recipe with some values replaced (None means "keep the recipe's")."""
    if name not in RECIPES:
        raise KerasAdderError(f"unknown recipe {name!r} (choose from {', '.join(RECIPES)})")
    chosen = {key: value for key, value in overrides.items() if value is not None}
    return dataclasses.replace(RECIPES[name], **chosen)
