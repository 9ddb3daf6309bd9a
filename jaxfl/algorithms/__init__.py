"""One module per federated algorithm, each with ``SPEC`` (its config class and capabilities) and
``make(config, data, model, ...)`` returning a :class:`jaxfl.core.algorithm.FederatedAlgorithm`.

Every ``make`` checks its config's settings against the values their fields declare
(:func:`jaxfl.configs.check`: the same error, naming the flag, as the command line's) and its
model first: a raw flax module (``nn.Module``, an nnx module) passed
where a :class:`jaxfl.models.Model` belongs is a clear TypeError naming
``Model.from_linen``/``Model.from_nnx`` (a linen module has ``init``/``apply`` methods of its
own, which would otherwise fail deep inside the round).

Each module's ``SPEC`` (:mod:`jaxfl.configs.specs`) is its config class and what it can do
(DP, model groups, attacks, its default ``--client-val-fraction``, ...); the configs and specs
import no JAX, so the command line's ``--help`` is made from them.
"""

import dataclasses
import functools

from jaxfl.algorithms import (
    ditto,
    dsfl,
    fccl,
    fd,
    fedavg,
    fedbuff,
    feddf,
    feddyn,
    fedmd,
    fednova,
    fedprox,
    finetune,
    hypcluster,
    incfl,
    local,
    moon,
    mrmtl,
    perfedavg,
    scaffold,
)
from jaxfl.configs import PERSONALIZATION as PERSONALIZATION  # defined without JAX, for --help
from jaxfl.configs import check as check_settings
from jaxfl.models.zoo import as_model

ALGORITHMS = {
    "fedavg": fedavg,
    "dsfl": dsfl,
    "local": local,
    "finetune": finetune,
    "ditto": ditto,
    "mrmtl": mrmtl,
    "hypcluster": hypcluster,
    "perfedavg": perfedavg,
    "incfl": incfl,
    "fd": fd,
    "feddf": feddf,
    "fedmd": fedmd,
    "fccl": fccl,
    "fedbuff": fedbuff,
    "fedprox": fedprox,
    "scaffold": scaffold,
    "fednova": fednova,
    "feddyn": feddyn,
    "moon": moon,
}


def _checks_model(make):
    @functools.wraps(make)
    def checked(config, data, model, *args, **kwargs):
        if dataclasses.is_dataclass(config):  # each setting against its declared values
            check_settings(config)
        return make(config, data, as_model(model), *args, **kwargs)

    return checked


for _module in ALGORITHMS.values():
    _module.make = _checks_model(_module.make)

__all__ = ["ALGORITHMS", "PERSONALIZATION"]
