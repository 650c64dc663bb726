"""Entry point: the flow lives in mlintern/flows/nightly.py."""

from mlintern.flows.nightly import nightly_sweep

__all__ = ['nightly_sweep']
