"""Prefect tasks: each does one thing, with retries and timeouts that match what can fail."""
