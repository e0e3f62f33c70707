"""The gateway daemon: rounds, strategies, checkpoints, publishing the global model."""
