"""The actor system: one actor per device, the MQTT link, the scheduler and the listeners."""
