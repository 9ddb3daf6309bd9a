"""Every setting of jaxfl, declared once, without JAX.

:mod:`~jaxfl.configs.fields` (a setting: default, help, allowed values),
:mod:`~jaxfl.configs.shared` (the settings many algorithms share: local training, FedAvg's
server, DP, the virtual clock, faults), one module per family of algorithm configs, and
:mod:`~jaxfl.configs.specs` (each algorithm's config and capabilities). The command line's
flags, ``--help``, TOML config files and the library's checks are all made from these.
"""

from jaxfl.configs.fields import check, setting, settings
from jaxfl.configs.specs import ALGORITHMS, PERSONALIZATION, SPECS, AlgorithmSpec, with_capability

__all__ = [
    "ALGORITHMS",
    "PERSONALIZATION",
    "SPECS",
    "AlgorithmSpec",
    "check",
    "setting",
    "settings",
    "with_capability",
]
