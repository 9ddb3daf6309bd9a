"""FedAvg + fine-tuning (Wang et al. 2019; Motley's strongest simple baseline).

Training is FedAvg exactly (:mod:`algorithms.fedavg`, any server optimizer: FedAdam with
``--server-opt adam``). Personalization happens at evaluation: every client starts from the
global model w_t and fine-tunes it on its own training split,

    v_k^(e) = LocalSGD_k(w_t; e epochs, lr ``finetune_lr``, all layers or the output layer only)

and the number of epochs is chosen once for all clients on VALIDATION data,

    E* = argmax_{e in candidates} mean_k acc(v_k^(e); validation split of k)

(ties: the smaller e). The test splits are read only to report acc(v_k^(E*)) (``client_acc``);
they never influence E*. ``finetune_val_acc_E{e}`` records the validation accuracy of every
candidate, ``finetune_epochs`` the chosen E*, ``global_client_acc`` the model without
fine-tuning. Candidates come from ``--finetune-epochs`` (e.g. "0,1,2,5"; 0 means no fine-tuning).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxfl.algorithms import fedavg
from jaxfl.configs.personalization import FinetuneConfig
from jaxfl.configs.specs import SPECS
from jaxfl.core import hooks, hparams, metrics
from jaxfl.core.algorithm import make_algorithm, sample_clients
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import faults
from jaxfl.mechanisms.personalization import FINETUNE_LAYERS, choose_epochs, finetune_curves
from jaxfl.models import Model

SPEC = SPECS["finetune"]  # its config and capabilities (jaxfl.configs.specs)


def parse_candidates(text: str | int) -> tuple[int, ...]:
    """ "0,1,2,5" -> (0, 1, 2, 5), sorted and unique; a clear error names the flag."""
    try:
        values = sorted({int(v) for v in str(text).split(",") if v.strip()})
    except ValueError:
        values = []
    if not values or values[0] < 0:
        raise ValueError(
            f"--finetune-epochs {text!r} is not allowed; allowed: comma-separated integers >= 0, "
            "e.g. 0,1,2,5"
        )
    return tuple(values)


def make(
    config: FinetuneConfig,
    data: Federation,
    model: Model,
    *,
    fault_config: faults.FaultConfig | None = None,
    seed: int = 0,
    select_clients=sample_clients,
    aggregate_updates=None,
    client_optimizer: hooks.OptimizerArg | None = None,
    server_optimizer: hooks.OptimizerArg | None = None,
):
    """Bind FedAvg + fine-tuning to a federation and a model; returns a FederatedAlgorithm.

    ``aggregate_updates``, ``client_optimizer`` and ``server_optimizer`` are FedAvg's
    (:func:`algorithms.fedavg.make`); the fine-tuning step keeps ``--finetune-lr``'s SGD.
    """
    candidates = parse_candidates(config.finetune_epochs)
    if config.finetune_layers not in FINETUNE_LAYERS:
        raise ValueError(
            f"unknown --finetune-layers {config.finetune_layers!r}; allowed: "
            f"{', '.join(FINETUNE_LAYERS)}"
        )
    if len(candidates) > 1 and not np.any(jax.device_get(hparams.concrete(data).client_val_count)):
        raise ValueError(
            f"--finetune-epochs {config.finetune_epochs} offers several candidates, chosen on "
            "validation data, but the clients have no validation split: set "
            "--client-val-fraction > 0 (e.g. 0.1) or give one value"
        )
    base_fields = {f.name for f in dataclasses.fields(fedavg.FedAvgConfig)}
    base_config = fedavg.FedAvgConfig(**{k: getattr(config, k) for k in base_fields})
    extra = {} if aggregate_updates is None else {"aggregate_updates": aggregate_updates}
    base = fedavg.make(
        base_config,
        data,
        model,
        fault_config=fault_config,
        seed=seed,
        select_clients=select_clients,
        # built from this config (a factory sees the fine-tuning flags too); None: FedAvg's flags
        client_optimizer=hooks.optimizer(client_optimizer, config, lambda: None),
        server_optimizer=hooks.optimizer(server_optimizer, config, lambda: None),
        **extra,
    )
    eval_key = jax.random.fold_in(jax.random.key(seed), 0xF1E)

    def evaluate(state, data):
        val_acc, test_acc = finetune_curves(
            model.apply,
            state.params,
            data,
            jax.random.fold_in(eval_key, state.round),
            epochs=candidates[-1],
            lr=hparams.given(config.finetune_lr, config.lr),
            batch_size=config.batch_size,
            layers=config.finetune_layers,
            chunk_size=config.client_chunk,
        )
        best, val_means = choose_epochs(val_acc, candidates, data.client_val_count)
        chosen = jnp.asarray(candidates)[best]
        return {
            "test_acc": metrics.global_test_accuracy(model.apply, state.params, data),
            "client_acc": test_acc[:, chosen],
            "global_client_acc": test_acc[:, 0],
            "finetune_epochs": chosen,
            **{f"finetune_val_acc_E{e}": val_means[i] for i, e in enumerate(candidates)},
        }

    return make_algorithm(
        "finetune",
        base.parts,
        base.init,
        evaluate,
        data,
        clients_per_round=base.clients_per_round,
        client_chunk=config.client_chunk,
        communication=base.communication,
    )
