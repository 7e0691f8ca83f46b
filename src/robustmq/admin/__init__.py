"""Operations: HTTP admin API, Prometheus metrics and dashboard (not built yet)."""
