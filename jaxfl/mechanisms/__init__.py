"""Mechanisms that cut across algorithms: faults (dropout, stragglers, adversaries), differential
privacy and its accounting, the virtual clock, model groups (clients with different
architectures), personalization helpers, and FedAvg's client side of a round (sampling, faults,
local training; :mod:`~jaxfl.mechanisms.client_round`) shared by the model-delta algorithms.
They build on :mod:`jaxfl.core` only."""
