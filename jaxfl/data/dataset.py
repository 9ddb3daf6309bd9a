"""The in-memory form every data source produces (no JAX, no TFDS: a plain dataclass)."""

from __future__ import annotations

import dataclasses

import numpy as np


class DataUnavailableError(RuntimeError):
    """The requested data set cannot be loaded here (offline, not cached, missing files)."""


@dataclasses.dataclass
class Dataset:
    """A labelled data set held on the host.

    Attributes:
      name: the data set actually used (e.g. ``"mnist"`` or ``"synthetic(1.0,1.0)"``).
      train_x: (N, *feature_shape) float32; (N, T) int32 tokens for a language task.
      train_y: (N,) int32 in [0, num_classes); (N, T) int32 next-token targets for a language
        task (0 is padding: :data:`jaxfl.core.train.PAD_TOKEN`).
      test_x: (M, *feature_shape) float32, or (M, T) tokens.
      test_y: (M,) int32, or (M, T) targets.
      num_classes: number of labels (the vocabulary size of a language task).
      train_groups: optional natural partition, a list of index arrays into the train split
        (one per client), for data sets that are federated by construction.
      test_groups: the matching list of index arrays into the test split.
      source: where the arrays came from (``"tfds"``, ``"idx:DIR"``, ``"cache:FILE"``, ...).
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    train_groups: list[np.ndarray] | None = None
    test_groups: list[np.ndarray] | None = None
    source: str = ""

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])
