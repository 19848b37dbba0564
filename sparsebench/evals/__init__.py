"""Metrics and evaluations. Metrics observe the engine; they never steer it."""
