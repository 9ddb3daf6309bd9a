"""The local-only baseline of a run: what each client reaches training alone, on the same split.

Motley's question "is a client better off than training alone?" and the incentivized
participation rate both need every client's local-only accuracy on exactly the data split of
the run being judged. :func:`local_only_accuracy` trains it vectorized (``--algo local`` with the
run's data, model, local-training and round flags, no faults), once, and caches the (C,)
accuracies and training losses under ``$JAXFL_CACHE/local_only/`` keyed by those flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json

import numpy as np

from jaxfl.configs.shared import DPFields
from jaxfl.data.sources import cache_dir
from jaxfl.mechanisms.faults import FaultConfig

# the flags that determine the local-only result (data split, model, local training, rounds)
BASELINE_FLAGS = (
    "dataset",
    "data_dir",
    "partition",
    "alpha",
    "shards_per_client",
    "classes_per_client",
    "rare_labels",
    "rare_examples",
    "clients",
    "clients_per_round",
    "public_size",
    "public_dataset",
    "client_test_size",
    "client_val_fraction",
    "model",
    "conv_lowering",
    "rounds",
    "local_epochs",
    "batch_size",
    "lr",
    "seed",
    "client_chunk",
)


def baseline_args(args: argparse.Namespace, client_val_fraction: float) -> argparse.Namespace:
    """The flags of the local-only run that matches ``args`` (same split, no faults, no DP)."""
    local = argparse.Namespace(**vars(args))
    local.algo = "local"
    local.client_val_fraction = client_val_fraction
    local.client_chunk = args.client_chunk
    local.unseen_clients = None  # every client can train alone, seen by the federation or not
    local.data_placement = "auto"  # local training keeps every client's state: on the device
    for field, value in vars(FaultConfig()).items():
        setattr(local, field, value)
    for field in (
        *(f.name for f in dataclasses.fields(DPFields)),
        "dp_epsilon",
        "dp_delta",
        "dp_accountant",
        "participation",  # every client trains alone: no cohort to draw
    ):
        setattr(local, field, None)  # local training uploads nothing: no DP to apply
    return local


def cache_key(args: argparse.Namespace) -> str:
    record = {name: getattr(args, name, None) for name in BASELINE_FLAGS}
    text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def local_only(
    run,
    client_val_fraction: float,
    build,
    dataset=None,
    verbose: bool = True,
) -> dict[str, np.ndarray]:
    """Each client's local-only model after --rounds, scored on the run's split.

    Args:
      run: the :class:`jaxfl.configs.run.RunConfig` of the run being judged.
      client_val_fraction: its resolved validation fraction (the split must be identical).
      build: :func:`jaxfl.experiments.builder.build` (passed in: the builder calls this module
        for IncFL's rho_k, so this module does not import it back).
      dataset: the loaded data set, to skip loading it again.

    Returns:
      ``{"acc": (C,) accuracy on the client's own test split, "train_loss", "val_loss": (C,)
      mean cross-entropy on its own training / validation split}`` (IncFL's F_k(w_k^loc); the
      validation loss is 0 for a client without a validation split).
    """
    import jax

    from jaxfl.configs.run import RunConfig
    from jaxfl.core import train
    from jaxfl.core.client_axis import map_clients, on_client_mesh
    from jaxfl.experiments.simulation import Simulation

    args = run.to_flags()
    local = baseline_args(args, client_val_fraction)
    path = cache_dir() / "local_only" / f"{cache_key(local)}.npz"
    if path.exists():
        with np.load(path) as saved:
            return {k: saved[k] for k in ("acc", "train_loss", "val_loss")}
    if verbose:
        print(f"training the local-only baseline ({args.rounds} rounds), cached in {path.parent}")
    exp = build(RunConfig.from_flags(local), dataset)
    sim = Simulation(exp.algorithm, args.rounds, eval_every=args.rounds, seed=args.seed)
    captured = {}
    sim.on("evaluate", lambda client_acc, **_: captured.update(acc=client_acc))
    state, _ = sim.run()
    data = exp.data

    @jax.jit
    @on_client_mesh
    def split_loss(params, data, idx_rows, counts):
        def one_client(p, idx, cnt):
            return train.client_loss(exp.model.apply, p, data.train_x, data.train_y, idx, cnt)

        return map_clients(
            one_client, params, idx_rows, counts, chunk_size=exp.config["client_chunk"]
        )

    result = {"acc": np.asarray(captured["acc"])}
    if exp.model is not None:  # one architecture (IncFL's case; with --models only accuracies)
        (params,) = state.client_params
        result["train_loss"] = np.asarray(
            split_loss(params, data, data.client_idx, data.client_count)
        )
        result["val_loss"] = np.asarray(
            split_loss(params, data, data.client_val_idx, data.client_val_count)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **result)
    tmp.replace(path)
    return result


def local_only_accuracy(run, client_val_fraction: float, build, dataset=None) -> np.ndarray:
    """(C,) local-only accuracies on each client's own test split (see :func:`local_only`)."""
    return local_only(run, client_val_fraction, build, dataset)["acc"]
