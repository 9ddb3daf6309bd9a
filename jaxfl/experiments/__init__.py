"""Running experiments: from settings to results.

- :mod:`~jaxfl.experiments.builder`: settings -> a bound algorithm, its data and model.
- :mod:`~jaxfl.experiments.axis`: the experiments axis (seeds x hyperparameter grids, stacked
  federations); :mod:`~jaxfl.experiments.vectorized`: ``CompiledSweep``, S experiments in one
  compiled call; :mod:`~jaxfl.experiments.sweep_runner`: its host loop.
- :mod:`~jaxfl.experiments.simulation`: one experiment's host loop and events
  (:mod:`~jaxfl.experiments.events`), checkpoints (:mod:`~jaxfl.experiments.checkpoint`),
  the results folder (:mod:`~jaxfl.experiments.results`), reports, the local-only baseline,
  memory and FLOP estimates.
"""
