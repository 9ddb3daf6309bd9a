"""Natural federations: data sets split by their real users (writers, speakers, people), read
from the formats they are published in, with their heavy-tailed client sizes.

- :mod:`~jaxfl.data.natural.store`: ``ClientColumns``, clients' examples as columns plus
  offsets (no padding), what every reader returns.
- Readers (and writers, for fixtures and benchmarks): :mod:`~jaxfl.data.natural.fedjax_sqlite`,
  :mod:`~jaxfl.data.natural.tff_sqlite` (with :mod:`~jaxfl.data.natural.tf_example`, the
  ``tf.train.Example`` message without TensorFlow), :mod:`~jaxfl.data.natural.leaf_json`.
- :mod:`~jaxfl.data.natural.leaf_synthetic`: LEAF's synthetic federation, generated.
- :mod:`~jaxfl.data.natural.datasets`: the federations by name (``--dataset``) and
  :func:`load_natural`.
"""

from jaxfl.data.natural.datasets import NATURAL_DATASETS, load_natural
from jaxfl.data.natural.store import ClientColumns, NaturalDataError, size_summary

__all__ = ["NATURAL_DATASETS", "ClientColumns", "NaturalDataError", "load_natural", "size_summary"]
