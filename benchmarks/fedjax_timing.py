"""What both FedJAX peer runners share (``fedjax_fedavg.py``, ``fedjax_shakespeare.py``): time
FedJAX's FedAvg on a FedJAX SQLite federation and print the one JSON line the benchmark reads.

Runs in FedJAX's environment (see ``fedjax_fedavg.py``) and imports nothing from jaxfl; the
runners import it as a sibling module (a script's folder is on ``sys.path``).
"""

from __future__ import annotations

import json
import time

import fedjax
import jax
import numpy as np
from fedjax.algorithms import fed_avg


def time_fedavg(data, model, clients_per_round: int, batch_size: int, lr: float, rounds: int):
    """FedAvg (SGD on clients at ``lr``, server SGD at 1, one epoch of ``batch_size``) on
    ``data`` with ``model``, clients drawn by ``UniformGetClientSampler`` (seed 0); prints the
    first round's and the median steady round's seconds as one JSON line."""
    algorithm = fed_avg.federated_averaging(
        fedjax.model_grad(model),
        fedjax.optimizers.sgd(lr),
        fedjax.optimizers.sgd(1.0),
        fedjax.ShuffleRepeatBatchHParams(batch_size=batch_size, num_epochs=1),
    )
    state = algorithm.init(model.init(jax.random.PRNGKey(0)))
    sampler = fedjax.client_samplers.UniformGetClientSampler(
        data, num_clients=clients_per_round, seed=0
    )
    times = []
    for _ in range(rounds + 1):
        clients = sampler.sample()
        start = time.perf_counter()
        state, _ = algorithm.apply(state, clients)
        jax.block_until_ready(state.params)
        times.append(time.perf_counter() - start)
    record = {
        "fedjax_first_round_s": times[0],
        "fedjax_round_s": float(np.median(times[1:])),
        "clients_per_round": clients_per_round,
        "jax": jax.__version__,
        "devices": len(jax.devices()),
    }
    print(json.dumps(record))
