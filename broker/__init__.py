"""Mosquitto for fedge: config templates and a private broker on a free loopback port."""

from __future__ import annotations

from broker.local import LocalBroker, find_mosquitto, free_port, render_config

__all__ = ["LocalBroker", "find_mosquitto", "free_port", "render_config"]
