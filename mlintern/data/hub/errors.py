"""Errors of Hub dataset operations; each message names the dataset and what to do."""

from __future__ import annotations


class HubError(RuntimeError):
    """A Hub dataset operation failed; the message names the dataset and what to do."""


class DatasetNotFoundError(HubError):
    pass


class GatedDatasetError(HubError):
    pass


class HubUnreachableError(HubError):
    pass


class _DeadlineExceeded(Exception):
    pass


class _Transient(Exception):
    def __init__(self, error: HubError):
        self.error = error
