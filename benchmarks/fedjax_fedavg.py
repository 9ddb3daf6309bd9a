"""FedJAX's own FedAvg on a FedJAX SQLite federation, timed: the peer row of
``scripts/bench.py --suite natural``.

Runs in FedJAX's environment, not jaxfl's (FedJAX 0.0.16 needs jax < 0.4.24 and dm-haiku):

    python -m venv ~/fedjax-env
    ~/fedjax-env/bin/pip install fedjax==0.0.16 "jax<0.4.24" "jaxlib<0.4.24" \
        "dm-haiku<0.0.12" "optax<0.2" "numpy<2" "scipy<1.13"
    ~/fedjax-env/bin/python benchmarks/fedjax_fedavg.py FILE.sqlite --clients-per-round 100

It imports nothing from jaxfl. The federation is read with ``fedjax.SQLiteFederatedData`` and
preprocessed as ``fedjax.datasets.emnist`` does (x = 1 - pixels, (28, 28, 1); y = label); the
model is ``fedjax.models.emnist.create_conv_model`` (Reddi et al.'s CNN, with its dropout), the
algorithm ``fedjax.algorithms.fed_avg.federated_averaging`` with SGD on clients and server,
clients sampled by ``fedjax.client_samplers.UniformGetClientSampler``. Prints one JSON line:
compile (first round) and median steady round seconds.
"""

from __future__ import annotations

import argparse
import json
import time

import fedjax
import jax
import numpy as np
from fedjax.algorithms import fed_avg
from fedjax.models import emnist


def _preprocess(batch):
    return {"x": np.reshape(1.0 - batch["pixels"], (-1, 28, 28, 1)), "y": batch["label"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="a FedJAX SQLite file of EMNIST-shaped clients")
    p.add_argument("--clients-per-round", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds after the first")
    args = p.parse_args()

    data = fedjax.SQLiteFederatedData.new(args.path).preprocess_batch(_preprocess)
    model = emnist.create_conv_model(only_digits=False)
    grad_fn = fedjax.model_grad(model)
    algorithm = fed_avg.federated_averaging(
        grad_fn,
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
