"""Entry point: the flow lives in mlintern/flows/experiment.py."""

from mlintern.flows.experiment import experiment

__all__ = ['experiment']
