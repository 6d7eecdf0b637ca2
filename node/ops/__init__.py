"""Operations: Prometheus metrics and the logging policy (PHI in logs, formats)."""
