"""What an LLM server's failures mean (status, own words, mode refusal, retry), the cost, key redaction."""

from __future__ import annotations

import json
import re

from mlintern.settings import get_settings

_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 529}
_MODE_REFUSED_STATUS = {400, 415, 422}
_MODE_WORDS = re.compile(r"response_format|json_schema|json_object|schema|grammar|structured", re.I)


def _describe(exc: Exception) -> tuple[int | None, str]:
    """The server's status and own words (its error body), redacted and cut to 600 characters."""
    status = getattr(exc, "status_code", None)
    body = ""
    response = getattr(exc, "response", None)
    try:
        body = response.text if response is not None else ""
    except Exception:  # a streamed or closed response
        body = ""
    if body:
        try:
            parsed = json.loads(body)
            err = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
            body = err.get("message", body) if isinstance(err, dict) else body
        except ValueError:
            pass
    detail = body or getattr(exc, "message", None) or str(exc)
    detail = re.sub(r"^(litellm\.\w+: )?(\w+Error: )?(\w+Exception - )?", "", str(detail).strip())
    if not status and not detail:
        detail = type(exc).__name__
    return (int(status) if isinstance(status, int) else None), _redact(detail)[:600]


def _refuses_mode(exc: Exception, status: int | None, detail: str) -> bool:
    """Did the server refuse the response_format (rather than fail)?"""
    import litellm

    if isinstance(exc, litellm.ContextWindowExceededError):
        return False
    if isinstance(exc, litellm.UnsupportedParamsError):
        return True
    if isinstance(exc, (litellm.Timeout, litellm.APIConnectionError)):
        return False
    if status in _MODE_REFUSED_STATUS:
        return True
    return status is not None and status >= 500 and bool(_MODE_WORDS.search(detail))


def _retryable(exc: Exception, status: int | None) -> bool:
    import litellm

    if isinstance(exc, (litellm.Timeout, litellm.APIConnectionError)):
        return True
    return status in _RETRYABLE_STATUS


def _retry_after(exc: Exception) -> float | None:
    headers = getattr(exc, "litellm_response_headers", None) or getattr(getattr(exc, "response", None), "headers", None)
    try:
        value = headers.get("retry-after") if headers is not None else None
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _cost(response) -> float:
    try:
        import litellm

        return float(litellm.completion_cost(completion_response=response) or 0.0)
    except Exception:  # unknown model: no price registered
        return 0.0


def _api_key() -> str | None:
    key = get_settings().llm_api_key
    return key.get_secret_value() if key else None


def _redact(text: str) -> str:
    key = _api_key()
    if key:
        text = text.replace(key, "**********")
    return text


def redact(text: str) -> str:
    """`text` with the configured API key masked (for anything written to logs or MLflow)."""
    return _redact(text)


def _safe_url(url: str | None) -> str | None:
    """A URL without user:password@ credentials."""
    return re.sub(r"//[^/@]+@", "//", url) if url else url


safe_url = _safe_url
