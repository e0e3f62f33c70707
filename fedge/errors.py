"""One root exception, a few subclasses, each with a machine-readable ``reason``.

Daemons count rejections by ``reason`` and log them once; callers never parse messages.
"""

from __future__ import annotations


class FedgeError(Exception):
    """Root of every error fedge raises on purpose."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class WireError(FedgeError):
    """A message from the network was refused; ``reason`` says why (see ``fedge.wire.Reason``).

    The text quotes untrusted values, so it is cut to ``MAX_MESSAGE`` characters: a hostile
    payload must not turn into megabytes of log.
    """

    reason = "malformed"
    MAX_MESSAGE = 300

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        if len(message) > self.MAX_MESSAGE:
            message = message[: self.MAX_MESSAGE - 1] + "…"
        super().__init__(message, reason=reason)


class CodecError(WireError):
    """Encoded tensor data is inconsistent with its codec fields."""

    reason = "malformed"


class ConfigError(FedgeError):
    """A configuration file or option is invalid; the message names the key."""

    reason = "config"


class DataError(FedgeError):
    """Local training data is missing, malformed or incompatible with the model."""

    reason = "data"


class ModelError(FedgeError):
    """A model spec or weights do not fit the model."""

    reason = "model"


class TrainingStopped(FedgeError):
    """Training was abandoned between two SGD steps because the daemon is stopping."""

    reason = "stopped"


class BrokerError(FedgeError):
    """The local Mosquitto could not be found, started or reached."""

    reason = "broker"
