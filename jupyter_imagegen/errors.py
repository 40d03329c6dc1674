"""Exceptions raised or reported by jupyter_imagegen.

`ImageAPIError` describes a failed HTTP exchange (it is *reported* in
`ImageResponse.error`, the client does not raise it to callers);
`ImageRetryableError` is the subclass the client retries.
`ConfigError` / `RequestError` are raised for bad input before anything is sent.
"""
from __future__ import annotations

from typing import Optional


class ImageGenError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(ImageGenError, ValueError):
    """A configuration value is missing or invalid. The message names the variable."""


class RequestError(ImageGenError, ValueError):
    """An ImageRequest cannot be sent as it is. The message says what to fix."""


class ImageAPIError(ImageGenError):
    """The API answered with an error, or no usable image."""

    def __init__(self, status: Optional[int], message: str, api_url: str = "",
                 *, code: Optional[str] = None, body: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.api_url = api_url
        self.code = code
        self.body = body

    def __str__(self) -> str:  # pragma: no cover - trivial
        prefix = f"HTTP {self.status}: " if self.status else ""
        return f"{prefix}{self.message}"


class ImageRetryableError(ImageAPIError):
    """A transient failure: the client may try again after `retry_after` seconds (if given)."""

    def __init__(self, status: Optional[int], message: str, api_url: str = "",
                 *, retry_after: Optional[float] = None, code: Optional[str] = None,
                 body: Optional[str] = None):
        super().__init__(status, message, api_url, code=code, body=body)
        self.retry_after = retry_after
