"""Devices: the device actor, its supervisor, the MQTT link and protocol, and simulated controllers."""
