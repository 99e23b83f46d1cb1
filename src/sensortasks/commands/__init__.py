"""The ``tasks/commands/*`` adapter: MQTT 5 request/response over the application layer."""
