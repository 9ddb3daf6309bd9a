"""Data: sources (TFDS, IDX folders, embedded synthetic), partitioners and the Federation."""

from jaxfl.data.federation import Federation, FederationSpec, build_federation, pack
from jaxfl.data.partition import PARTITIONS, PartitionError
from jaxfl.data.sources import DATASETS, Dataset, DataUnavailableError, load_dataset

__all__ = [
    "DATASETS",
    "PARTITIONS",
    "DataUnavailableError",
    "Dataset",
    "Federation",
    "FederationSpec",
    "PartitionError",
    "build_federation",
    "load_dataset",
    "pack",
]
