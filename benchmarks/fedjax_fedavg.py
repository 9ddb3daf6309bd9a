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

import fedjax
import numpy as np
from fedjax.models import emnist
from fedjax_timing import time_fedavg


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
    time_fedavg(data, model, args.clients_per_round, args.batch_size, args.lr, args.rounds)


if __name__ == "__main__":
    main()
