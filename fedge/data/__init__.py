"""Offline data: bundled datasets for emulation, client partitions, the on-device file."""

from fedge.data.datasets import DATASETS, Dataset, emulated_split, load_dataset
from fedge.data.files import load_npz, save_npz
from fedge.data.partition import label_histogram, parse_partition, partition

__all__ = [
    "DATASETS",
    "Dataset",
    "emulated_split",
    "label_histogram",
    "load_dataset",
    "load_npz",
    "parse_partition",
    "partition",
    "save_npz",
]
