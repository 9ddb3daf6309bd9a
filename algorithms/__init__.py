"""One module per federated algorithm, each with ``XConfig`` and ``make(config, data, model)``."""

from algorithms import dsfl, fedavg

ALGORITHMS = {"fedavg": fedavg, "dsfl": dsfl}

__all__ = ["ALGORITHMS", "dsfl", "fedavg"]
