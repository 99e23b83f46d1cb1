"""Measuring tools: the benchmark against raw MQTT, the mixed-fault soak, listing at scale."""
