"""What operators see: Prometheus metrics, `sensortasks watch`, log set-up."""
