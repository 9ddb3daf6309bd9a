"""The engine: what one compiled round is made of.

- :mod:`~jaxfl.core.algorithm`: ``RoundParts(prepare, client_update, finish)`` -> one jitted round
  (:func:`~jaxfl.core.algorithm.make_algorithm`) and its per-client loop reference.
- :mod:`~jaxfl.core.client_axis`: the clients axis: ``map_clients`` / ``sum_clients`` (vmap in
  chunks), the device mesh, ``shard_map`` over it.
- :mod:`~jaxfl.core.train`: local training on one client's data, distillation, evaluation.
- :mod:`~jaxfl.core.aggregate`: weighted means and robust aggregators.
- :mod:`~jaxfl.core.hooks`, :mod:`~jaxfl.core.hparams`, :mod:`~jaxfl.core.metrics`,
  :mod:`~jaxfl.core.names` (choice lists readable without JAX, for ``--help``).

Imports only :mod:`jaxfl.data` and :mod:`jaxfl.models` (and itself); nothing above it.
"""
