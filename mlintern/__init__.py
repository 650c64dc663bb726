"""ml-intern: an autonomous post-training research agent on Prefect."""

__version__ = "0.1.0"
