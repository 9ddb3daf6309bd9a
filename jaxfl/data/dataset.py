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
      train_x: (N, *feature_shape) float32.
      train_y: (N,) int32 in [0, num_classes).
      test_x: (M, *feature_shape) float32.
      test_y: (M,) int32.
      num_classes: number of labels.
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
