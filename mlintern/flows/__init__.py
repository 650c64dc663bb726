"""Prefect flows: the research loop (controller) and one experiment (runs on a GPU pool)."""
