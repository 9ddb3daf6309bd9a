"""FedJAX's own FedAvg on its Shakespeare task, timed: the peer row of
``scripts/bench.py --suite language``.

Runs in FedJAX's environment (see ``benchmarks/fedjax_fedavg.py`` for its installation) and
imports nothing from jaxfl. The federation is FedJAX's ``shakespeare_train.sqlite`` layout read
with ``fedjax.SQLiteFederatedData`` and preprocessed by
``fedjax.datasets.shakespeare.preprocess_client`` (rows of 80 tokens); the model is
``fedjax.models.shakespeare.create_lstm_model`` (embedding 8, two LSTM layers of 256, 90
outputs), the algorithm ``fedjax.algorithms.fed_avg.federated_averaging`` with SGD on clients
(learning rate 1, batch 4, one epoch: Reddi et al.'s Shakespeare client settings) and on the
server (1), clients sampled by ``fedjax.client_samplers.UniformGetClientSampler``. Prints one
JSON line: the first round's and the median steady round's seconds.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import fedjax
import jax
import numpy as np
from fedjax.algorithms import fed_avg
from fedjax.datasets import shakespeare
from fedjax.models import shakespeare as shakespeare_models


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="FedJAX's shakespeare_train.sqlite (or a file of that layout)")
    p.add_argument("--clients-per-round", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds after the first")
    args = p.parse_args()

    preprocess = functools.partial(shakespeare.preprocess_client, sequence_length=80)
    data = fedjax.SQLiteFederatedData.new(args.path).preprocess_client(preprocess)
    model = shakespeare_models.create_lstm_model()
    algorithm = fed_avg.federated_averaging(
        fedjax.model_grad(model),
        fedjax.optimizers.sgd(args.lr),
        fedjax.optimizers.sgd(1.0),
        fedjax.ShuffleRepeatBatchHParams(batch_size=args.batch_size, num_epochs=1),
    )
    state = algorithm.init(model.init(jax.random.PRNGKey(0)))
    sampler = fedjax.client_samplers.UniformGetClientSampler(
        data, num_clients=args.clients_per_round, seed=0
    )
    times = []
    for _ in range(args.rounds + 1):
        clients = sampler.sample()
        start = time.perf_counter()
        state, _ = algorithm.apply(state, clients)
        jax.block_until_ready(state.params)
        times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "fedjax_first_round_s": times[0],
                "fedjax_round_s": float(np.median(times[1:])),
                "clients_per_round": args.clients_per_round,
                "jax": jax.__version__,
                "devices": len(jax.devices()),
            }
        )
    )


if __name__ == "__main__":
    main()
