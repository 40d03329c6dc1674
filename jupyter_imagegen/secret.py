"""The API key: held so that it never shows itself, and scrubbed from everything that is shown
or stored.

`Secret` holds the key (masked in repr/str/format, refused by pickle); only the header builder
reads it, into an `AuthHeader`. `SecretScrubber` masks a key in texts: a fast pass for every
string of an answer as it comes in, a thorough pass (any case, any spelling, any piece) for what
is shown or stored.
"""
from __future__ import annotations

import functools
import hmac
import html
import json
import re
from typing import Any, Iterable, List, Optional, Union
from urllib.parse import unquote

from .errors import ConfigError


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
    undone first by `SecretScrubber.thorough`)."""
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
_INVISIBLE_CHARS = "\u00ad\u200b\u200c\u200d\u2060\ufeff"
_INVISIBLE = dict.fromkeys(map(ord, _INVISIBLE_CHARS))
#: a text that may spell something another way (what `_decoded` undoes)
_SPELLED = re.compile("[%\\\\&" + _INVISIBLE_CHARS + "]")


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

    __slots__ = ("_pairs", "_forms", "_keys", "_run", "_suspect")

    def __init__(self, secrets: Iterable[Union[None, str, Secret]]):
        secrets = list({reveal(s): s for s in secrets if s}.values())   # each key once
        self._pairs = [(form, mask_token(secret)) for secret in secrets for form in secret_forms(secret)]
        self._forms = [form for form, _ in self._pairs]
        #: (the key in lower case, its mask, its pieces in lower case)
        self._keys = []
        chars, shortest = set(), PIECE
        for secret in secrets:
            raw = reveal(secret)
            if raw and len(raw) >= 4:
                low = HiddenStr(raw.lower())
                n = min(PIECE, len(low))
                self._keys.append((low, mask_token(secret), frozenset(low[i:i + n] for i in range(len(low) - n + 1))))
                chars |= set(low) | set(raw.upper())
                shortest = min(shortest, n)
        #: a run of characters a piece could be made of: a text without one holds no piece (a
        #: C-speed test that spares most texts the piece-by-piece look)
        run = "[" + "".join(re.escape(c) for c in sorted(chars)) + "]{%d,}" % shortest
        self._run = re.compile(run) if chars else None
        #: either of the two reasons to look closer, in one search
        self._suspect = re.compile(f"{run}|{_SPELLED.pattern}") if chars else None

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
        if not text.isascii():
            text = _no_surrogates(text)
        if not self._keys:
            return text
        text = self(text)
        if not self._suspect.search(text):     # no run a piece could be, no other spelling: done
            return text
        if self._run.search(text):
            masked = self._mask_pieces(text)
            if masked is not None:
                text = masked
        if _SPELLED.search(text):
            plain = _decoded(text)
            if plain != text and self._run.search(plain):
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
            is_dict = type(item) is dict
            for slot, v in (item.items() if is_dict else enumerate(item)):   # (values only change)
                t = type(v)
                if t is str:
                    clean = clean_text(v)
                    if clean is not v:
                        item[slot] = clean
                elif t is dict or t is list:
                    stack.append(v)
            if is_dict:
                renamed = [(k, c) for k, c in ((k, clean_text(k)) for k in item if type(k) is str) if c is not k]
                for k, clean_key in renamed:
                    item[clean_key] = item.pop(k)
        return value

    def may_hold(self, body: bytes) -> bool:
        """Whether a raw JSON body can hold a key as is once decoded: its bytes hold one, or a
        backslash (a JSON escape can spell any character). Two C-speed scans, so that most
        answers skip the walk over their decoded strings."""
        return bool(self._forms) and (b"\\" in body or any(f.encode() in body for f in self._forms))

    def found(self, text: str) -> bool:
        """Whether `text` holds a key (or a piece of one), in any spelling or case, or the mask
        the fast pass put in its place."""
        if not self._keys or not isinstance(text, str) or not text:
            return False
        text = text[:THOROUGH_MAX]
        return (any(f in text for f in self._forms) or any(mask in text for _, mask, _ in self._keys)
                or self.thorough(text) != _no_surrogates(text))

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


@functools.lru_cache(maxsize=32)
def scrubber_for(*secrets: Union[None, str, Secret]) -> SecretScrubber:
    """The SecretScrubber of these keys, made once (its pieces of a 160-character key cost a few
    hundred microseconds to work out: not on every request)."""
    return SecretScrubber(secrets)


def scrub_secrets(text: Any, secrets: Iterable[Union[None, str, Secret]]) -> Any:
    """`text` with every key of `secrets` masked, thoroughly (see `SecretScrubber.thorough`;
    texts longer than THOROUGH_MAX get the fast pass only)."""
    scrubber = scrubber_for(*secrets)
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
