"""ImageConfig: settings from the environment plus explicit overrides, validated up front."""
from __future__ import annotations

import dataclasses
import hmac
import html
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import ConfigError

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


def mask_token(token: Union[None, str, "Secret"]) -> str:
    """`sk-o...wxyz`: the first and last 4 characters; short tokens are hidden entirely."""
    if isinstance(token, Secret):
        return token.masked
    if not token:
        return "(none)"
    if len(token) < 12:
        return "****"
    return f"{token[:4]}...{token[-4:]}"


class Secret:
    """An API key that does not show itself: ``repr()``, ``str()``, f-strings and pickling give
    the mask (`sk-o...wxyz`), so no traceback frame (``%xmode Verbose`` prints the locals of
    every frame), log line or saved object can carry the key. Only the header builder reads the
    value, with `get_secret_value()`, straight into the request's Authorization header (itself
    a `str` whose repr is masked)."""

    __slots__ = ("_value",)

    def __init__(self, value: Union[str, "Secret"]):
        if isinstance(value, Secret):
            value = value.get_secret_value()
        if not isinstance(value, str):
            raise ConfigError(f"an API key must be a string, not {type(value).__name__}")
        self._value = HiddenStr(value.strip())

    def get_secret_value(self) -> "HiddenStr":
        """The key itself (a `str` whose repr is masked: a variable holding it shows the mask in
        a traceback): for the Authorization header and the scrubbers that hide it."""
        return self._value

    @property
    def masked(self) -> str:
        return mask_token(self._value)

    def __repr__(self) -> str:
        return f"Secret('{self.masked}')"

    def __str__(self) -> str:
        return self.masked

    def __format__(self, spec: str) -> str:
        return format(self.masked, spec)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, Secret):
            other = other.get_secret_value()
        return isinstance(other, str) and hmac.compare_digest(self._value.encode(), other.encode())

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self):
        # a pickled config or request (multiprocessing, a saved session) must not carry the key
        raise TypeError("an API key (Secret) is not pickled: pass the key again where it is needed")

    def __copy__(self) -> "Secret":
        return self

    def __deepcopy__(self, memo: Any) -> "Secret":
        return self


def as_secret(value: Union[None, str, Secret]) -> Optional[Secret]:
    """`value` as a Secret (None and empty keys as None)."""
    if value is None:
        return None
    secret = Secret(value)
    return secret if secret else None


def reveal(value: Union[None, str, Secret]) -> Optional[str]:
    """The plain text of a key given as a Secret or a str (for the scrubbers)."""
    return value.get_secret_value() if isinstance(value, Secret) else value


def secret_forms(value: Union[None, str, Secret]) -> List[str]:
    """The ways a key is written as is in a text: itself and JSON-escaped (other spellings are
    decoded first by `scrub_secrets`)."""
    raw = reveal(value)
    if not raw or len(raw) < 4:
        return []
    forms = [raw, json.dumps(raw)[1:-1]]
    return [HiddenStr(f) for f in dict.fromkeys(forms)]


#: escapes that can spell one character of a key: JSON / JS / Python / CSS backslash escapes
#: (`\\u0073`, `\\u{73}`, `\\U00000073`, `\\x73`, `\\/`, `\\73 `), `%u0073`
_ESCAPE = re.compile(r"\\u\{([0-9a-fA-F]{1,6})\}|\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})|\\x([0-9a-fA-F]{2})"
                     r"|%u([0-9a-fA-F]{4})|\\([\\/\"'])|\\([0-9a-fA-F]{1,6}) ?")
#: characters that do not show and can be slipped into a key
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u2060\ufeff"))


def _unescape(text: str) -> str:
    def one(m: "re.Match[str]") -> str:
        for g in (1, 2, 3, 4, 5, 7):
            if m.group(g):
                code = int(m.group(g), 16)
                return chr(code) if code < 0x110000 else m.group(0)
        return m.group(6)
    return _ESCAPE.sub(one, text)


def _decoded(text: str) -> str:
    """`text` with every spelling we know undone (percent-encoding, backslash escapes, HTML
    entities, invisible characters), repeated while that changes it (double encodings)."""
    for _ in range(3):
        before = text
        if "%" in text:
            text = unquote(text)
        if "\\" in text or "%u" in text:
            text = _unescape(text)
        if "&" in text:
            text = html.unescape(text)
        text = text.translate(_INVISIBLE)
        if text == before:
            break
    return text


#: a run of this many characters of a key is treated as the key (a text cut short, by us or by a
#: library, keeps a piece of it; 12 random characters do not occur by chance)
PIECE = 12
#: the longest text the thorough scrub reads; longer texts are cut to it first (marked "…")
THOROUGH_MAX = 64 * 1024


class SecretScrubber:
    """Masks every key of `secrets` (Secrets or str) in a text.

    `scrubber(text)` is the fast pass, for anything of any size (an answer's 30 MB of base64
    included): the key as is (and JSON-escaped), a few C-speed scans per string.

    `scrubber.thorough(text)` is for the texts that are shown or stored (messages, the model's
    text, revised prompts, usage fields, URLs), at most `THOROUGH_MAX` characters: the key in
    any case and however it is spelled (percent-encoded, backslash-escaped, HTML entities,
    invisible characters slipped in, mixed and nested), and any run of `PIECE` or more of its
    characters (a text cut short keeps a piece). Lone surrogates (which no file or terminal can
    encode) become U+FFFD."""

    __slots__ = ("_pairs", "_forms", "_keys")

    def __init__(self, secrets: Iterable[Union[None, str, Secret]]):
        secrets = [s for s in secrets if s]
        self._pairs = [(form, mask_token(secret)) for secret in secrets for form in secret_forms(secret)]
        self._forms = [form for form, _ in self._pairs]
        #: (the key in lower case, its mask, its pieces in lower case)
        self._keys = []
        for secret in secrets:
            raw = reveal(secret)
            if raw and len(raw) >= 4:
                low = HiddenStr(raw.lower())
                n = min(PIECE, len(low))
                self._keys.append((low, mask_token(secret), frozenset(low[i:i + n] for i in range(len(low) - n + 1))))

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def __call__(self, text: Any) -> Any:
        """The fast pass: `text` with the key, as is, masked (anything else passes through)."""
        if not self._pairs or not isinstance(text, str) or not text:
            return text
        for form, mask in self._pairs:
            if form in text:
                text = text.replace(form, mask)
        return text

    def thorough(self, text: Any) -> Any:
        """The thorough pass (see the class): for a text that is shown or stored."""
        if not isinstance(text, str) or not text:
            return text
        if len(text) > THOROUGH_MAX:
            text = text[:THOROUGH_MAX - 1] + "…"
        text = _no_surrogates(text)
        if not self._keys:
            return text
        text = self(text)
        masked = self._mask_pieces(text)
        if masked is not None:
            text = masked
        plain = _decoded(text)
        if plain != text:
            masked = self._mask_pieces(plain)
            if masked is not None:      # the key was spelled another way: keep the text decoded, masked
                text = masked
        return text

    def walk(self, value: Any, *, thorough: bool = False) -> Any:
        """`value` (a str, or decoded JSON such as an answer or `usage`) with the key out of every
        string, dict keys included (the fast pass; `thorough` for data shown or stored whole).
        Containers are changed in place, only where a string changes: pass data that is yours
        (fresh from json.loads). Iterative: answers may be deep."""
        if not self._pairs:
            return value
        clean_text = self.thorough if thorough else self
        if isinstance(value, str):
            return clean_text(value)
        stack = [value]
        while stack:
            item = stack.pop()
            slots = list(item.items()) if isinstance(item, dict) else enumerate(item)
            for slot, v in slots:
                if isinstance(v, str):
                    clean = clean_text(v)
                    if clean is not v:
                        item[slot] = clean
                elif isinstance(v, (dict, list)):
                    stack.append(v)
            if isinstance(item, dict):
                for k in [k for k in item if isinstance(k, str)]:
                    clean_key = clean_text(k)
                    if clean_key is not k:
                        item[clean_key] = item.pop(k)
        return value

    def found(self, text: str) -> bool:
        """Whether `text` holds a key (or a piece of one), in any spelling or case, or the mask
        the fast pass put in its place."""
        if not self._keys or not isinstance(text, str) or not text:
            return False
        text = text[:THOROUGH_MAX]
        return (any(f in text for f in self._forms) or any(mask in text for _, mask, _ in self._keys)
                or self._mask_pieces(text) is not None or self._mask_pieces(_decoded(text)) is not None)

    def _mask_pieces(self, text: str) -> Optional[str]:
        """`text` with every run of PIECE or more characters of a key (any case) masked; None
        when there is none."""
        low = text.lower()
        if len(low) != len(text):     # (a few characters change length in lower case)
            low = "".join(c.lower()[:1] or c for c in text)
        spans = []
        for key, mask, pieces in self._keys:
            n = min(PIECE, len(key))
            i = 0
            while i <= len(low) - n:
                if low[i:i + n] in pieces:
                    end = i + n
                    while end < len(low) and low[i:end + 1] in key:
                        end += 1
                    spans.append((i, end, mask))
                    i = end
                else:
                    i += 1
        if not spans:
            return None
        out, at = [], 0
        for start, end, mask in sorted(spans):
            if start < at:
                continue
            out.append(text[at:start])
            out.append(mask)
            at = end
        out.append(text[at:])
        return "".join(out)


def _no_surrogates(text: str) -> str:
    """`text` with lone surrogates (valid JSON, no valid UTF-8) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def scrub_secrets(text: Any, secrets: Iterable[Union[None, str, Secret]]) -> Any:
    """`text` with every key of `secrets` masked, thoroughly (see `SecretScrubber.thorough`;
    texts longer than THOROUGH_MAX get the fast pass only)."""
    scrubber = SecretScrubber(secrets)
    if isinstance(text, str) and len(text) > THOROUGH_MAX:
        return scrubber(text)
    return scrubber.thorough(text)


class HiddenStr(str):
    """A key's text as a real `str` (it compares, hashes and formats as the text) whose repr is
    the mask: what a variable holding it shows in a Verbose traceback or a debugger."""

    def __repr__(self) -> str:
        return repr(mask_token(str.__str__(self)))


class AuthHeader(str):
    """The Authorization header's value: a real `str` for aiohttp, masked in repr() (a frame's
    locals and the request info an aiohttp error carries show the mask)."""

    def __repr__(self) -> str:
        scheme, _, key = str.partition(self, " ")
        return repr(f"{scheme} {mask_token(key)}")


def auth_header(token: Secret, scheme: str = "Bearer") -> AuthHeader:
    return AuthHeader(f"{scheme} {token.get_secret_value()}")


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
