"""ImageConfig: settings from the environment plus explicit overrides, validated up front."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigError
from .secret import Secret, as_secret, mask_token

#: the wire formats this package speaks
API_TYPES = ("openrouter_chat", "openai_images", "openai_responses")

ENV_TOKEN = "IMAGE_AUTH_TOKEN"
ENV_API_TYPE = "IMAGE_API_TYPE"
ENV_BASE_URL = "IMAGE_BASE_URL"
ENV_MODEL = "IMAGE_MODEL"
ENV_TIMEOUT = "IMAGE_TIMEOUT"
ENV_CONNECT_TIMEOUT = "IMAGE_CONNECT_TIMEOUT"
ENV_MAX_ATTEMPTS = "IMAGE_MAX_ATTEMPTS"
ENV_MAX_RETRIES = "IMAGE_MAX_RETRIES"
ENV_CONCURRENCY = "IMAGE_MAX_CONCURRENCY"
ENV_CONNECTIONS = "IMAGE_MAX_CONNECTIONS"
ENV_CACHE = "IMAGE_CACHE"
ENV_CACHE_DIR = "IMAGE_CACHE_DIR"
ENV_CACHE_MAX_MB = "IMAGE_CACHE_MAX_MB"

DEFAULT_BASE_URLS = {
    "openrouter_chat": "https://openrouter.ai/api/v1",
    "openai_images": "https://api.openai.com/v1",
    "openai_responses": "https://api.openai.com/v1",
}
DEFAULT_MODELS = {
    "openrouter_chat": "google/gemini-2.5-flash-image",
    "openai_images": "gpt-image-1",
    "openai_responses": "gpt-4.1-mini",
}
#: suggestions for the widget's model box and the docs
SUGGESTED_MODELS = {
    "openrouter_chat": ["google/gemini-2.5-flash-image", "google/gemini-3-pro-image-preview",
                        "openai/gpt-5-image-mini", "openai/gpt-5-image"],
    "openai_images": ["gpt-image-1", "gpt-image-1-mini", "dall-e-3", "dall-e-2"],
    "openai_responses": ["gpt-4.1-mini", "gpt-4.1", "gpt-4o", "gpt-5"],
}


def validate_api_type(value: Any, source: str = "api_type") -> str:
    v = str(value).strip().lower().replace("-", "_")
    if v not in API_TYPES:
        raise ConfigError(f"{source}={value!r} is not a known API type; use one of: {', '.join(API_TYPES)}")
    return v


def base_url_problem(value: Any) -> Optional[str]:
    """What is wrong with `value` as an API base URL (None when it is fine)."""
    parts = urlsplit(str(value).strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return (f"{value!r} is not an http(s) URL; write it like 'https://api.openai.com/v1' "
                "(scheme and host included)")
    return None


def safe_url(url: Optional[str]) -> Optional[str]:
    """A URL as it may be shown or saved: without user:password, query string or fragment (they
    can carry credentials: a signed download URL's query is one). Never raises: a URL that does
    not parse is cut at its query."""
    if not url:
        return url
    try:
        p = urlsplit(str(url))
        host = p.hostname or ""
        port = p.port
    except ValueError:          # "http://[zz]/", "http://a:99999/"
        return str(url).split("?", 1)[0].split("#", 1)[0]
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((p.scheme, host + (f":{port}" if port else ""), p.path, "", ""))


def validate_base_url(value: Any, source: str = "base_url") -> str:
    problem = base_url_problem(value)
    if problem:
        raise ConfigError(f"{source}={problem}")
    return str(value).strip().rstrip("/")


def _number(value: Any, source: str, *, kind=float, minimum: float = 0, allow_zero: bool = False):
    try:
        v = kind(str(value).strip()) if isinstance(value, str) else kind(value)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number of seconds"
        raise ConfigError(f"{source}={value!r} must be {what}") from None
    if v < minimum or (v == minimum and not allow_zero and minimum == 0):
        raise ConfigError(f"{source}={value!r} must be greater than {minimum}" if not allow_zero
                          else f"{source}={value!r} must be at least {minimum}")
    return v


def _boolean(value: Any, source: str) -> bool:
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{source}={value!r} must be 1/0 (or true/false, yes/no, on/off)")


@dataclass(frozen=True)
class ImageConfig:
    """Client settings. `token` never appears in repr; use `masked_token` for hints."""
    api_type: str = "openrouter_chat"
    base_url: Optional[str] = None
    model: Optional[str] = None
    token: Optional[Secret] = field(default=None, repr=False)   # a str is wrapped in a Secret
    timeout: float = 120.0            # seconds for one attempt (headers + body)
    connect_timeout: float = 15.0
    max_attempts: int = 3
    backoff_base: float = 1.0         # first backoff delay, doubled each attempt, with jitter
    backoff_max: float = 30.0
    retry_after_max: float = 60.0     # a server's Retry-After is honoured up to this
    max_concurrency: int = 8          # calls of one n>1 fan-out in flight at once
    max_connections: int = 64         # the connection pool, per host (shared by all requests)
    max_download_bytes: int = 64 * 1024 * 1024
    max_response_bytes: int = 256 * 1024 * 1024
    download_timeout: float = 60.0
    cache: bool = False               # the request cache (on by default in the magic and the form)
    cache_dir: Optional[str] = None   # default: $IMAGE_CACHE_DIR or ~/.cache/jupyter-imagegen
    cache_max_bytes: int = 512 * 1024 * 1024
    token_source: str = ENV_TOKEN

    def __post_init__(self) -> None:
        object.__setattr__(self, "api_type", validate_api_type(self.api_type, "api_type"))
        object.__setattr__(self, "token", as_secret(self.token))
        if self.base_url is not None:
            object.__setattr__(self, "base_url", validate_base_url(self.base_url))
        for name in ("timeout", "connect_timeout", "backoff_max", "retry_after_max", "download_timeout"):
            object.__setattr__(self, name, _number(getattr(self, name), name))
        object.__setattr__(self, "backoff_base", _number(self.backoff_base, "backoff_base", allow_zero=True))
        object.__setattr__(self, "max_attempts", _number(self.max_attempts, "max_attempts", kind=int, minimum=1, allow_zero=True))
        object.__setattr__(self, "max_concurrency", _number(self.max_concurrency, "max_concurrency", kind=int, minimum=1, allow_zero=True))
        object.__setattr__(self, "max_connections", _number(self.max_connections, "max_connections", kind=int, minimum=1, allow_zero=True))

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None, **overrides: Any) -> "ImageConfig":
        """Read IMAGE_* variables from `env` (default os.environ); keyword overrides win."""
        env = os.environ if env is None else env
        kw: Dict[str, Any] = {}

        def get(name: str) -> Optional[str]:
            v = env.get(name)
            return v if v not in (None, "") else None

        if get(ENV_API_TYPE):
            kw["api_type"] = validate_api_type(get(ENV_API_TYPE), ENV_API_TYPE)
        if get(ENV_BASE_URL):
            kw["base_url"] = validate_base_url(get(ENV_BASE_URL), ENV_BASE_URL)
        if get(ENV_MODEL):
            kw["model"] = get(ENV_MODEL).strip()
        if get(ENV_TOKEN):
            kw["token"] = Secret(get(ENV_TOKEN))
        if get(ENV_TIMEOUT):
            kw["timeout"] = _number(get(ENV_TIMEOUT), ENV_TIMEOUT)
        if get(ENV_CONNECT_TIMEOUT):
            kw["connect_timeout"] = _number(get(ENV_CONNECT_TIMEOUT), ENV_CONNECT_TIMEOUT)
        if get(ENV_MAX_ATTEMPTS):
            kw["max_attempts"] = _number(get(ENV_MAX_ATTEMPTS), ENV_MAX_ATTEMPTS, kind=int, minimum=1, allow_zero=True)
        elif get(ENV_MAX_RETRIES):
            kw["max_attempts"] = _number(get(ENV_MAX_RETRIES), ENV_MAX_RETRIES, kind=int, minimum=0, allow_zero=True) + 1
        if get(ENV_CONCURRENCY):
            kw["max_concurrency"] = _number(get(ENV_CONCURRENCY), ENV_CONCURRENCY, kind=int, minimum=1, allow_zero=True)
        if get(ENV_CONNECTIONS):
            kw["max_connections"] = _number(get(ENV_CONNECTIONS), ENV_CONNECTIONS, kind=int, minimum=1, allow_zero=True)
        if get(ENV_CACHE):
            kw["cache"] = _boolean(get(ENV_CACHE), ENV_CACHE)
        if get(ENV_CACHE_DIR):
            kw["cache_dir"] = get(ENV_CACHE_DIR)
        if get(ENV_CACHE_MAX_MB):
            kw["cache_max_bytes"] = int(_number(get(ENV_CACHE_MAX_MB), ENV_CACHE_MAX_MB) * 1024 * 1024)
        kw.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(kw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**kw)

    def replace(self, **changes: Any) -> "ImageConfig":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    # -- derived --------------------------------------------------------------------------------
    @property
    def effective_base_url(self) -> str:
        return self.base_url or DEFAULT_BASE_URLS[self.api_type]

    def base_url_for(self, api_type: str, base_url: Optional[str] = None) -> str:
        """The base URL a request of `api_type` goes to: `base_url` (a request's own) or the
        configured one, except that a vendor's default URL does not carry over to the other
        vendor's API type."""
        base = base_url or self.base_url
        if base is None or (base in DEFAULT_BASE_URLS.values() and base != DEFAULT_BASE_URLS[api_type]):
            return DEFAULT_BASE_URLS[api_type]
        return base

    @property
    def effective_model(self) -> str:
        return self.model or DEFAULT_MODELS[self.api_type]

    @property
    def masked_token(self) -> str:
        return mask_token(self.token)

    @property
    def auth_hint(self) -> str:
        if not self.token:
            return f"no token: set {self.token_source}"
        return f"token {self.masked_token} from {self.token_source}"
