"""The application layer: customer operations and broker accounts, shared by REST, MQTT commands and the CLI."""
