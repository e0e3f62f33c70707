"""Aggregation rules, one small file each, all behind ``Strategy``."""

from aggregator.strategies.base import Strategy
from aggregator.strategies.fedavg import FedAvg

__all__ = ["FedAvg", "Strategy"]
