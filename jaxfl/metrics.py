"""Evaluation metrics: global test accuracy, per-client accuracy, and their summaries."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from jaxfl.clients import map_clients
from jaxfl.data.federation import Federation
from jaxfl.train import accuracy, client_accuracy


def global_test_accuracy(apply: Callable, params, data: Federation):
    """Accuracy of one model on the global test split."""
    return accuracy(apply, params, data.test_x, data.test_y)


def per_client_accuracy(
    apply: Callable, params, data: Federation, *, personal: bool, chunk_size: int | None = None
):
    """(C,) accuracy of each client on its own test split.

    Args:
      apply: model apply.
      params: one model's parameters (``personal=False``: the global model, evaluated on every
        client's split) or a client-axis pytree (``personal=True``: client k's own model).
      data: the federation.
      chunk_size: clients per vmap chunk.
    """
    x, y = data.test_x, data.test_y
    if personal:
        fn = lambda p, idx, cnt: client_accuracy(apply, p, x, y, idx, cnt)
        args = (params, data.client_test_idx, data.client_test_count)
    else:
        fn = lambda idx, cnt: client_accuracy(apply, params, x, y, idx, cnt)
        args = (data.client_test_idx, data.client_test_count)
    return map_clients(fn, *args, chunk_size=chunk_size)


def summarize_clients(values: np.ndarray, prefix: str) -> dict[str, float]:
    """Mean, median, 10th and 90th percentile of a per-client metric."""
    v = np.asarray(values, dtype=np.float64)
    return {
        f"{prefix}_mean": float(v.mean()),
        f"{prefix}_median": float(np.median(v)),
        f"{prefix}_p10": float(np.percentile(v, 10)),
        f"{prefix}_p90": float(np.percentile(v, 90)),
    }
