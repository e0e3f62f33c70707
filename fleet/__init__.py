"""Emulate a fleet on one machine: a private Mosquitto, one aggregator, N agents."""
