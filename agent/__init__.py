"""The device daemon: local data, the train loop, and the session to the broker."""
