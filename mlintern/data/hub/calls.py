"""Hub calls under a wall-clock deadline with bounded retries, and failures mapped to clear errors.

huggingface_hub's own knobs are ``HF_HUB_ETAG_TIMEOUT`` (metadata requests of file downloads,
default 10 s) and ``HF_HUB_DOWNLOAD_TIMEOUT`` (per read of a download, default 10 s), both read
once when huggingface_hub is imported, and ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` (fail at
once instead of retrying). They do not bound everything: ``HfApi.list_datasets`` has no timeout
and retries a dead network 5 times (about 23 s), and datasets' streaming reader retries 20 times
5 s apart. So every Hub call here also runs under a wall-clock deadline (``INTERN_HUB_TIMEOUT_S``,
default 30 s) with at most ``INTERN_HUB_RETRIES`` (default 2) retries of transient failures
(timeouts, 5xx, 429, dropped connections) inside that deadline; "not found", "gated" and offline
mode fail at once. Errors name the dataset id and what to do.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from mlintern.data.hub.errors import (
    DatasetNotFoundError,
    GatedDatasetError,
    HubError,
    HubUnreachableError,
    _DeadlineExceeded,
    _Transient,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class HubPolicy:
    timeout_s: float = field(default_factory=lambda: float(os.environ.get("INTERN_HUB_TIMEOUT_S", "30")))
    retries: int = field(default_factory=lambda: int(os.environ.get("INTERN_HUB_RETRIES", "2")))
    backoff_s: float = 1.0  # first wait between retries; doubles, at most 4x


def _run_with_deadline(fn: Callable[[], T], seconds: float) -> T:
    """Run fn in a daemon thread; _DeadlineExceeded if it has not finished after `seconds` (the
    thread is left to end on its own: huggingface_hub offers no way to cancel a request)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name="hub-call")
    thread.start()
    thread.join(max(0.01, seconds))
    if thread.is_alive():
        raise _DeadlineExceeded
    if "error" in box:
        raise box["error"]
    return box["value"]


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_DATASETS_OFFLINE", os.environ.get("HF_HUB_OFFLINE", ""))
    return constants.is_offline_mode() or env.upper() in {"1", "ON", "YES", "TRUE"}


def _classify(exc: BaseException, repo_id: str, what: str, subject: str) -> HubError | _Transient | None:
    """Map an exception from huggingface_hub/datasets to a clear HubError (None: not a Hub error)."""
    from huggingface_hub import errors as hf_errors

    try:
        from datasets.exceptions import DatasetNotFoundError as DsNotFound
    except ImportError:  # pragma: no cover
        DsNotFound = FileNotFoundError  # noqa: N806
    name = type(exc).__name__
    text = str(exc)
    if isinstance(exc, hf_errors.GatedRepoError):
        return GatedDatasetError(
            f"dataset {repo_id} is gated on the Hub ({what}): accept its terms at "
            f"https://huggingface.co/datasets/{repo_id} and set HF_TOKEN")
    if isinstance(exc, (hf_errors.RepositoryNotFoundError, DsNotFound)) or (
            isinstance(exc, FileNotFoundError) and "on the Hub" in text):
        return DatasetNotFoundError(
            f"dataset {repo_id} not found on the Hub ({what}): check the id (owner/name, e.g. with "
            "find_datasets()), or set HF_TOKEN if it is private")
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return DatasetNotFoundError(f"dataset {repo_id}: revision not found on the Hub ({what}): check the revision")
    if isinstance(exc, hf_errors.OfflineModeIsEnabled) or (
            isinstance(exc, ConnectionError) and ("OfflineModeIsEnabled" in text or _offline())):
        return HubUnreachableError(
            f"Hub unreachable (offline mode: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set) while {what} "
            f"{subject}: use a local copy as 'hf:<folder saved with save_to_disk>' or "
            "'hf:<file>.jsonl', or unset HF_HUB_OFFLINE when the Hub can be reached")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, hf_errors.HfHubHTTPError) and status is not None and status not in (408, 429) and status < 500:
        return HubError(f"Hub refused {what} {subject} (HTTP {status}): {text[:300]}")
    transient_names = {"ConnectError", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout",
                       "TimeoutException", "NetworkError", "RemoteProtocolError", "ReadError"}
    if (isinstance(exc, (ConnectionError, TimeoutError, hf_errors.HfHubHTTPError))
            or name in transient_names or any(c.__name__ in transient_names for c in type(exc).__mro__)):
        return _Transient(HubUnreachableError(
            f"Hub unreachable (offline?) while {what} {subject}: {name}: {text[:200]}. Check the "
            "network or proxy, or work offline with HF_HUB_OFFLINE=1 and a local copy as 'hf:<path>'"))
    return None


def hub_call(fn: Callable[[], T], *, repo_id: str, what: str, policy: HubPolicy | None = None,
             subject: str | None = None) -> T:
    """Run one Hub operation under a deadline, with bounded retries of transient failures.
    `what` and `subject` phrase the error ("reading sample rows of" + "dataset org/x")."""
    policy = policy or HubPolicy()
    subject = subject or f"dataset {repo_id}"
    deadline = time.monotonic() + policy.timeout_s
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise _DeadlineExceeded
            with _bounded_datasets_retries(policy):
                return _run_with_deadline(fn, remaining)
        except _DeadlineExceeded:
            raise HubUnreachableError(
                f"Hub did not answer within {policy.timeout_s:g} s while {what} {subject} "
                f"({attempt} attempt(s)): the Hub may be unreachable (offline?). Set HF_HUB_OFFLINE=1 and "
                "use a local copy as 'hf:<path>', or raise INTERN_HUB_TIMEOUT_S") from None
        except HubError:
            raise
        except Exception as exc:
            mapped = _classify(exc, repo_id, what, subject)
            if mapped is None:
                raise
            if isinstance(mapped, _Transient):
                wait = policy.backoff_s * min(2.0 ** (attempt - 1), 4.0)
                if attempt <= policy.retries and deadline - time.monotonic() > wait:
                    log.warning("%s (attempt %d of %d); retrying in %.0f s", mapped.error, attempt,
                                policy.retries + 1, wait)
                    time.sleep(wait)
                    continue
                raise mapped.error from None
            raise mapped from None


@contextmanager
def _bounded_datasets_retries(policy: HubPolicy):
    """datasets' streaming reader retries 20 times 5 s apart by default: bound it to the policy."""
    try:
        from datasets import config
    except ImportError:  # pragma: no cover
        yield
        return
    names = {"STREAMING_READ_MAX_RETRIES": max(1, policy.retries), "STREAMING_OPEN_MAX_RETRIES": max(1, policy.retries),
             "STREAMING_READ_RETRY_INTERVAL": 1, "STREAMING_OPEN_RETRY_INTERVAL": 1}
    saved = {k: getattr(config, k) for k in names if hasattr(config, k)}
    for k in saved:
        setattr(config, k, min(saved[k], names[k]))
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(config, k, v)


def _hub_revision(repo_id: str, policy: HubPolicy) -> str | None:
    from huggingface_hub import HfApi

    try:
        info = hub_call(lambda: HfApi().dataset_info(repo_id, timeout=min(policy.timeout_s, 10.0)), repo_id=repo_id,
                        what="reading the revision of", policy=HubPolicy(timeout_s=min(policy.timeout_s, 15.0), retries=0))
        return info.sha
    except HubError as exc:  # data served from the local cache while offline
        log.info("no Hub revision for %s: %s", repo_id, exc)
        return None
