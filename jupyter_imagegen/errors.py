"""Exceptions raised or reported by jupyter_imagegen: branch on these types, never on message text.

Raised before anything is sent (bad input)::

    ImageGenError
    ├── ConfigError (also a ValueError)         a configuration value is missing or invalid
    │   └── MissingTokenError                    no API token; `.variable` names the variable to set
    └── RequestError (also a ValueError)         the ImageRequest cannot be sent as it is

Reported for a failed HTTP exchange (the client does not raise these to callers: a failed call
comes back as an `ImageResponse` with `success=False`, its text in `.error` and the typed error in
`.exception`; `ImageResponse.raise_for_error()` raises it)::

    ImageAPIError                               any failure; `.status` (None: no HTTP answer),
    │                                           `.message`, `.api_url`, `.code`, `.body`
    ├── BadRequestError              400
    ├── AuthenticationError          401
    ├── PaymentRequiredError         402
    ├── PermissionDeniedError        403
    ├── NotFoundError                404
    ├── UnprocessableEntityError     422
    ├── NoImageError                 200        the API answered, but without a usable image
    ├── ContentPolicyError           varies     the provider's safety system refused the request:
    │                                           400 (OpenAI), 403 (OpenRouter), or 200 when the
    │                                           refusal came inside an answer or a stream
    └── ImageRetryableError                     transient: the client retries it (`.retry_after`)
        ├── RateLimitError           429
        ├── InternalServerError      >= 500
        └── APIConnectionError       no status  refused, reset, a body or stream cut short
            └── APITimeoutError      no status  an attempt timed out

The status classes carry their status on the class (as openai-python's do:
``RateLimitError.status == 429``); an instance's ``.status`` is the status the API actually sent
(e.g. 503 for an `InternalServerError`). A moderation code wins over the status (a 400
`moderation_blocked` is a `ContentPolicyError`, not a `BadRequestError`). A 408 or 409 is a plain
`ImageRetryableError`; any other status without a class here is a plain `ImageAPIError`.
`api_error_for()` picks the class.

`GenerationCancelled` (a KeyboardInterrupt, not an ImageGenError) is raised when a blocking run
is interrupted (Ctrl-C / "interrupt kernel").
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Type

from .retry import is_retryable_status

__all__ = [
    "ImageGenError", "ConfigError", "MissingTokenError", "RequestError", "InputImageError",
    "ImageAPIError", "ImageRetryableError", "BadRequestError", "AuthenticationError",
    "PaymentRequiredError", "PermissionDeniedError", "NotFoundError", "UnprocessableEntityError",
    "RateLimitError", "InternalServerError", "APIConnectionError", "APITimeoutError", "NoImageError",
    "ContentPolicyError", "GenerationCancelled", "api_error_for", "is_content_policy_code",
    "CONTENT_POLICY_CODES",
]

#: error codes (OpenAI `error.code`, OpenRouter `error.metadata.error_type`, a finish reason) that
#: mean the provider's safety system refused the request: see docs/WIRE.md
CONTENT_POLICY_CODES = frozenset({
    "moderation_blocked",               # OpenAI gpt-image (HTTP 400, or an error event in a stream)
    "content_policy_violation",         # OpenAI dall-e; OpenRouter error_type
    "image_content_policy_violation",   # OpenAI /responses error code
    "content_filter",                   # finish_reason / incomplete_details.reason
    "refusal",                          # OpenRouter error_type; a refusal message part
})


def is_content_policy_code(code: Optional[str]) -> bool:
    return isinstance(code, str) and code.lower() in CONTENT_POLICY_CODES


class ImageGenError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(ImageGenError, ValueError):
    """A configuration value is missing or invalid. The message names the variable."""


class MissingTokenError(ConfigError):
    """No API token: nothing was sent. `variable` is the environment variable to set."""

    def __init__(self, variable: str = "IMAGE_AUTH_TOKEN", message: Optional[str] = None):
        self.variable = variable
        super().__init__(message or f"no API token: set the {variable} environment variable "
                                    "(or pass token=...); nothing was sent")

    def __reduce__(self):  # the constructor's arguments are not `args`
        return (type(self), (self.variable, str(self)))


class RequestError(ImageGenError, ValueError):
    """An ImageRequest cannot be sent as it is. The message says what to fix."""


class InputImageError(RequestError):
    """An input image cannot be used: `label` names it (a file name, "--image x"), `reason` says
    why (the message is "label: reason")."""

    def __init__(self, label: str, reason: str):
        super().__init__(f"{label}: {reason}")
        self.label = label
        self.reason = reason

    def __reduce__(self):  # the constructor's arguments are not `args`
        return (type(self), (self.label, self.reason))


def _rebuild(cls: type, state: Dict[str, Any]) -> "ImageAPIError":
    """Unpickle (and copy) an ImageAPIError without calling its __init__."""
    obj = cls.__new__(cls)
    Exception.__init__(obj, state.get("_message", ""))
    obj.__dict__.update(state)
    return obj


class ImageAPIError(ImageGenError):
    """The API answered with an error, or without a usable image, or could not be reached.

    `status` is the HTTP status (None when there was no HTTP answer), `message` the readable text
    (the client puts the key's masked form where a server echoed the key), `code` the vendor's
    error code when it sent one, `body` the start of the error body (scrubbed), `api_url` the URL
    called.
    """

    #: the HTTP status of this class of error; None when it varies or there is none
    status: Optional[int] = None

    def __init__(self, status: Optional[int], message: str, api_url: str = "",
                 *, code: Optional[str] = None, body: Optional[str] = None):
        super().__init__(message)
        self.status = status if status is not None else type(self).status
        self.message = message
        self.api_url = api_url
        self.code = code
        self.body = body

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        # args follow the message, so repr()/pickling never show a text the client has scrubbed
        self._message = value
        self.args = (value,)

    def __str__(self) -> str:
        if self.status and self.status >= 400 and f"HTTP {self.status}" not in self.message:
            return f"HTTP {self.status}: {self.message}"
        return self.message

    def __repr__(self) -> str:
        code = f", code={self.code!r}" if self.code else ""
        return f"{type(self).__name__}(status={self.status!r}, message={self.message!r}{code})"

    def __reduce__(self):
        return (_rebuild, (type(self), dict(self.__dict__)))

    def copy(self, **changes: Any) -> "ImageAPIError":
        """The same error (same class and fields) with `changes` applied, without the traceback."""
        state = dict(self.__dict__)
        if "message" in changes:
            state["_message"] = changes.pop("message")
        state.update(changes)
        return _rebuild(type(self), state)


class ImageRetryableError(ImageAPIError):
    """A transient failure: the client may try again after `retry_after` seconds (if given)."""

    def __init__(self, status: Optional[int], message: str, api_url: str = "",
                 *, retry_after: Optional[float] = None, code: Optional[str] = None,
                 body: Optional[str] = None):
        super().__init__(status, message, api_url, code=code, body=body)
        self.retry_after = retry_after


# -- by HTTP status (not retried) ---------------------------------------------------------------
class BadRequestError(ImageAPIError):
    """400: the API refused the request as written (the message names the field)."""
    status = 400


class AuthenticationError(ImageAPIError):
    """401: the key is missing, wrong, or for another service."""
    status = 401


class PaymentRequiredError(ImageAPIError):
    """402: the account is out of credits."""
    status = 402


class PermissionDeniedError(ImageAPIError):
    """403: the key may not use this model or endpoint (verification, limits, region)."""
    status = 403


class NotFoundError(ImageAPIError):
    """404: no such model or endpoint at this base URL."""
    status = 404


class UnprocessableEntityError(ImageAPIError):
    """422: the request is well formed but the API cannot process it."""
    status = 422


class ContentPolicyError(ImageAPIError):
    """The provider's safety system refused the prompt or an input image; retrying will not help.

    No fixed status: a 400 from OpenAI (`moderation_blocked`, `content_policy_violation`), a 403
    from OpenRouter (`metadata.error_type: content_policy_violation`), or a refusal inside a 200
    answer or stream (an error event with such a code, `finish_reason: "content_filter"`, a
    refusal part): `status` is the one the answer had, `code` says which signal it was."""


class NoImageError(ImageAPIError):
    """The API answered (200) but without a usable image: only text, an empty list, data that is
    not an image, or an error object inside the answer or the stream."""
    status = 200


# -- transient (retried) ------------------------------------------------------------------------
class RateLimitError(ImageRetryableError):
    """429: too many requests; `retry_after` is the server's wait when it sent one."""
    status = 429


class InternalServerError(ImageRetryableError):
    """>= 500 (also an HTML error page from a proxy): the service is having trouble."""
    status = 500


class APIConnectionError(ImageRetryableError):
    """No (complete) HTTP answer: connection refused or reset, a body or stream cut short."""


class APITimeoutError(APIConnectionError):
    """An attempt took longer than its timeout."""


_BY_STATUS: Dict[int, Type[ImageAPIError]] = {
    400: BadRequestError, 401: AuthenticationError, 402: PaymentRequiredError,
    403: PermissionDeniedError, 404: NotFoundError, 422: UnprocessableEntityError,
    429: RateLimitError,
}


def api_error_for(status: Optional[int], message: str, url: str = "", *, retry_after: Optional[float] = None,
                  code: Optional[str] = None, body: Optional[str] = None,
                  in_answer: bool = False) -> ImageAPIError:
    """The typed error for an HTTP status (and the vendor's error code).

    A moderation code (`CONTENT_POLICY_CODES`) gives a `ContentPolicyError` whatever the status;
    2xx gives `NoImageError`; 400/401/402/403/404/422/429 their class; >= 500
    `InternalServerError`; 408/409 a plain `ImageRetryableError`; anything else (or None) a plain
    `ImageAPIError`. `in_answer=True` is for an error reported *inside* a 200 answer or stream
    (an OpenRouter error object, a stream's error event): those are not retried, so a status
    whose class would be retried gives a plain `ImageAPIError` instead.
    """
    cls: Type[ImageAPIError]
    if is_content_policy_code(code):
        cls = ContentPolicyError
    elif status is None:
        cls = ImageAPIError
    elif 200 <= status < 300:
        cls = NoImageError
    elif status in _BY_STATUS:
        cls = _BY_STATUS[status]
    elif status >= 500:
        cls = InternalServerError
    elif is_retryable_status(status):
        cls = ImageRetryableError
    else:
        cls = ImageAPIError
    if issubclass(cls, ImageRetryableError):
        if in_answer:
            return ImageAPIError(status, message, url, code=code, body=body)
        return cls(status, message, url, retry_after=retry_after, code=code, body=body)
    return cls(status, message, url, code=code, body=body)


class GenerationCancelled(KeyboardInterrupt):
    """Ctrl-C / "interrupt kernel" cancelled a blocking image call (the request was cancelled,
    its connection closed, nothing more is sent).

    A KeyboardInterrupt, so an interrupted notebook stops "Run all" as usual. `elapsed`: the
    seconds the call had run.
    """

    def __init__(self, message: Optional[str] = None, *, elapsed: Optional[float] = None):
        if message is None:
            when = f" after {elapsed:.1f} s" if elapsed is not None else ""
            message = f"image generation cancelled{when}; nothing more will be sent"
        super().__init__(message)
        self.elapsed = elapsed
