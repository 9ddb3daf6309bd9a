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

import fedjax
from fedjax.datasets import shakespeare
from fedjax.models import shakespeare as shakespeare_models
from fedjax_timing import time_fedavg


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
    time_fedavg(data, model, args.clients_per_round, args.batch_size, args.lr, args.rounds)


if __name__ == "__main__":
    main()
