"""Entry point: the flow lives in mlintern/flows/research_loop.py."""

from mlintern.flows.research_loop import research_loop

__all__ = ['research_loop']
