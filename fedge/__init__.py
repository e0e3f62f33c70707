"""fedge: federated learning for fleets of small devices over MQTT.

This package is the contract the agent and the aggregator share: wire format, codecs,
named tensors, models, data and config. It holds no daemon logic.
"""

__version__ = "0.1.0"
