"""Mosquitto for fedge: config templates and a private broker on a free loopback port."""

from __future__ import annotations

from broker.config import find_mosquitto, free_port, render_config
from broker.local import LocalBroker

__all__ = ["LocalBroker", "find_mosquitto", "free_port", "render_config"]
