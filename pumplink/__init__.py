"""PumpLink: safe, remotely controlled, scheduled pumps over MQTT."""

__version__ = "0.1.0"
