"""Broker accounts: what each kind may do (`accounts`) and Mosquitto's dynamic security (`dynsec`)."""
