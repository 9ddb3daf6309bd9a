"""Evaluation metrics: global test accuracy, per-client accuracy, and their summaries."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from jaxfl.core.client_axis import map_clients
from jaxfl.core.train import accuracy, client_accuracy, sequence_metrics
from jaxfl.data.federation import Federation


def global_test_accuracy(apply: Callable, params, data: Federation):
    """Accuracy of one model on the global test split."""
    return accuracy(apply, params, data.test_x, data.test_y)


def per_client_accuracy(
    apply: Callable,
    params,
    data: Federation,
    *,
    personal: bool,
    chunk_size: int | None = None,
    split: str = "test",
):
    """(C,) accuracy of each client on its own test (or validation) split.

    Args:
      apply: model apply.
      params: one model's parameters (``personal=False``: the global model, evaluated on every
        client's split) or a client-axis pytree (``personal=True``: client k's own model).
      data: the federation.
      chunk_size: clients per vmap chunk.
      split: "test" (the client's test split) or "val" (its validation split, held out of its
        training data).
    """
    x, y, idx_rows, counts = client_split(data, split)
    if personal:
        fn = lambda p, idx, cnt: client_accuracy(apply, p, x, y, idx, cnt)
        args = (params, idx_rows, counts)
    else:
        fn = lambda idx, cnt: client_accuracy(apply, params, x, y, idx, cnt)
        args = (idx_rows, counts)
    return map_clients(fn, *args, chunk_size=chunk_size)


def global_model_evaluator(apply: Callable, chunk_size: int | None = None) -> Callable:
    """``evaluate(state, data)`` of an algorithm with one global model ``state.params``: its
    ``test_acc`` on the global test split and ``client_acc`` (C,) on every client's own split;
    on a language task also ``test_acc_no_eos``, ``test_acc_no_oov_eos``, ``test_token_loss``
    and ``test_perplexity`` (:func:`jaxfl.core.train.sequence_metrics`)."""

    def evaluate(state, data: Federation) -> dict:
        if data.test_y.ndim == 2:  # next-token targets: the language task's metrics too
            seq = sequence_metrics(apply, state.params, data.test_x, data.test_y)
            test = {
                "test_acc": seq["acc"],
                "test_acc_no_eos": seq["acc_no_eos"],
                "test_acc_no_oov_eos": seq["acc_no_oov_eos"],
                "test_token_loss": seq["token_loss"],
                "test_perplexity": seq["perplexity"],
            }
        else:
            test = {"test_acc": global_test_accuracy(apply, state.params, data)}
        return test | {
            "client_acc": per_client_accuracy(
                apply, state.params, data, personal=False, chunk_size=chunk_size
            )
        }

    return evaluate


def client_split(data: Federation, split: str):
    """(x, y, idx (C, n), count (C,)) of every client's ``split``: train, val or test."""
    if split == "test":
        return data.test_x, data.test_y, data.client_test_idx, data.client_test_count
    if split == "val":
        return data.train_x, data.train_y, data.client_val_idx, data.client_val_count
    if split == "train":
        return data.train_x, data.train_y, data.client_idx, data.client_count
    raise ValueError(f"unknown split {split!r}; allowed: train, val, test")


def summarize_clients(
    values: np.ndarray, prefix: str, counted: np.ndarray | None = None
) -> dict[str, float]:
    """Mean, median, 10th and 90th percentile of a per-client metric; ``counted`` (C,) bool
    keeps only those clients (a language task's users without test text, whose accuracy is
    no number, are left out; their client_acc entry is 0)."""
    v = np.asarray(values, dtype=np.float64)
    if counted is not None and np.asarray(counted).any():
        v = v[np.asarray(counted)]
    return {
        f"{prefix}_mean": float(v.mean()),
        f"{prefix}_median": float(np.median(v)),
        f"{prefix}_p10": float(np.percentile(v, 10)),
        f"{prefix}_p90": float(np.percentile(v, 90)),
    }


def personalization_summary(
    client_acc: np.ndarray,
    global_client_acc: np.ndarray | None = None,
    local_client_acc: np.ndarray | None = None,
    seen_clients: int | None = None,
) -> dict[str, float]:
    """Per-client comparisons of the accuracies ``client_acc`` (C,) each client is served.

    ``frac_better_than_global``: clients whose accuracy beats the global model's on their own
    test split (``global_client_acc`` (C,)); ``frac_worse_than_local``: clients worse off than
    training alone (``local_client_acc`` (C,), the local-only baseline on the same split;
    Motley). ``ipr``, the incentivized participation rate of Cho et al. 2022, is the fraction
    better off than alone (= ``frac_better_than_local``); with ``seen_clients`` S < C also
    ``ipr_seen`` (clients 0..S-1, which trained) and ``ipr_unseen`` (the rest, never trained).
    """
    out = {}
    acc = np.asarray(client_acc, dtype=np.float64)
    if global_client_acc is not None:
        glob = np.asarray(global_client_acc, dtype=np.float64)
        out.update(summarize_clients(glob, "global_client_acc"))
        out["frac_better_than_global"] = float(np.mean(acc > glob))
    if local_client_acc is not None:
        local = np.asarray(local_client_acc, dtype=np.float64)
        out["frac_worse_than_local"] = float(np.mean(acc < local))
        out["frac_better_than_local"] = float(np.mean(acc > local))
        out["ipr"] = out["frac_better_than_local"]
        if seen_clients is not None and seen_clients < len(acc):
            better = acc > local
            out["ipr_seen"] = float(np.mean(better[:seen_clients]))
            out["ipr_unseen"] = float(np.mean(better[seen_clients:]))
    return out
