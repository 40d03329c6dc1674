"""What every wire format shares: the resolved request, the HTTP call description, the parsed result.

A provider only *builds* an HTTP call from a request and *parses* an answer into images.
It does no I/O, no retries, no display and holds no globals: the client does those.
"""
from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import ContentPolicyError, ImageAPIError, NoImageError, RequestError, api_error_for
from ..model import ImageRequest, InputImage, Usage, sniff_mime

MAX_N = 10            # the most images one request may ask for (OpenAI's own limit for n)
MAX_FANOUT_N = 16     # for one-image-per-call formats the client fans out up to this many calls
OUTPUT_FORMATS = ("png", "jpeg", "webp")

_SIZE = re.compile(r"^(\d{2,5})x(\d{2,5})$")
_RATIO = re.compile(r"^(\d{1,2}):(\d{1,2})$")


@dataclass
class Resolved:
    """An ImageRequest with the configuration folded in: what one provider call needs."""
    request: ImageRequest
    api_type: str
    base_url: str
    model: str
    inputs: List[InputImage] = field(default_factory=list)
    mask: Optional[InputImage] = None

    @property
    def prompt(self) -> str:
        return self.request.prompt


@dataclass(frozen=True)
class Replacement:
    """A request field the API cannot take as asked, and what is sent in its place (never
    silently: the log shows `notice`, the response and the history keep it)."""
    asked: str        # the request field, e.g. "size"
    value: Any        # what was asked, e.g. "5000x5000"
    sent: str         # the wire field sent instead, e.g. "aspect_ratio"
    sent_value: Any   # e.g. "1:1"
    why: str          # e.g. "OpenRouter takes no size in pixels"

    @property
    def notice(self) -> str:
        return f"{self.asked} {self.value} was sent as {self.sent} {self.sent_value}: {self.why}"


@dataclass
class FormField:
    name: str
    value: Any                      # str, or bytes for files
    filename: Optional[str] = None
    content_type: Optional[str] = None


@dataclass
class HttpCall:
    """One HTTP request to make. `form` is rebuilt into aiohttp.FormData on every attempt."""
    method: str
    url: str
    json: Optional[Dict[str, Any]] = None
    form: Optional[List[FormField]] = None
    stream: bool = False

    def describe(self) -> str:
        return f"{self.method} {self.url}"

    def form_data(self):
        """A fresh aiohttp.FormData of `form` (aiohttp's FormData can be sent only once)."""
        import aiohttp
        data = aiohttp.FormData()
        for f in self.form or ():
            if f.filename is not None:
                data.add_field(f.name, f.value, filename=f.filename, content_type=f.content_type)
            else:
                data.add_field(f.name, f.value)
        return data


@dataclass
class ImageRef:
    """An image found in a response: inline bytes, or a URL the client must download."""
    data: Optional[bytes] = None
    mime_type: Optional[str] = None
    url: Optional[str] = None
    revised_prompt: Optional[str] = None


@dataclass
class Parsed:
    images: List[ImageRef] = field(default_factory=list)
    text: Optional[str] = None
    revised_prompt: Optional[str] = None
    usage: Optional[Usage] = None
    model: Optional[str] = None


#: the deepest nesting an answer may have. Real answers nest less than 10 levels; 64 keeps deep
#: data (which json.loads itself refuses only at ~1000 levels) away from everything recursive
#: that later meets an answer's values: json.dumps, repr, copy, ==.
MAX_ANSWER_DEPTH = 64


class AnswerTooDeep(ValueError):
    """JSON nested deeper than `MAX_ANSWER_DEPTH` levels (`depth`: how deep it is)."""

    def __init__(self, depth: int):
        self.depth = depth
        super().__init__(f"JSON nested {depth} levels deep (at most {MAX_ANSWER_DEPTH} are read)")

    @property
    def nesting(self) -> str:
        """'nested 100000 levels deep', for messages."""
        return f"nested {self.depth} levels deep"


def json_depth(value: Any) -> int:
    """How deep `value` nests (a scalar: 0, `[]`: 1, `[[1]]`: 2), by an iterative walk: no
    recursion, whatever the depth."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > deepest:
            deepest = depth
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _text_depth(text: str) -> int:
    """The bracket depth of JSON text that json.loads gave up on (brackets inside strings do not
    count); iterative, and in C loops: 100,000 levels take milliseconds."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)


def load_json_answer(body: Union[bytes, bytearray, str], max_depth: int = MAX_ANSWER_DEPTH) -> Any:
    """The JSON value of an answer (a 200 body, an error body, a stream event), raising nothing but
    ValueError: json's own for invalid JSON (and bytes that are not UTF-8), `AnswerTooDeep` (a
    ValueError) for JSON nested deeper than `max_depth` levels, whether json.loads could still
    read it or hit Python's recursion limit."""
    try:
        value = json.loads(body)
    except RecursionError:
        text = body if isinstance(body, str) else bytes(body).decode("utf-8", "replace")
        raise AnswerTooDeep(max(_text_depth(text), max_depth + 1)) from None
    # no walk when the text cannot nest that deep: it has fewer brackets than levels allowed
    # (two C-speed counts; an answer has a dozen brackets and a 30 MB base64 string)
    opening = (b"[", b"{") if isinstance(body, (bytes, bytearray)) else ("[", "{")
    if body.count(opening[0]) + body.count(opening[1]) > max_depth:
        depth = json_depth(value)
        if depth > max_depth:
            raise AnswerTooDeep(depth)
    return value


def kind_of(value: Any) -> str:
    """What a JSON value is, in words ("a string", "a list", "an object", ...), for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


_WANTED = {dict: "an object", list: "a list", str: "a string"}


def field_of(obj: Dict[str, Any], key: str, want: type, where: str, notes: List[str]) -> Any:
    """`obj[key]` when it is a `want` (dict, list or str); None when it is absent or null; else
    None, with a note for the error message ("choices[0].message is a string, not an object")."""
    value = obj.get(key)
    if value is None or isinstance(value, want):
        return value
    notes.append(f"{where + '.' if where else ''}{key} is {kind_of(value)}, not {_WANTED[want]}")
    return None


def as_text(value: Any) -> Optional[str]:
    """`value` when it really is a string, else None: a number or an object where an answer
    should have text (a revised prompt, a model name) is not shown as text."""
    return value if isinstance(value, str) else None


def said(value: Any) -> Optional[str]:
    """`value` when it is a string with something in it (an error's message), else None."""
    return value if isinstance(value, str) and value.strip() else None


def shape_detail(notes: List[str]) -> str:
    """' (the answer is not as expected: data[0] is a string, not an object)' for a no-image
    message, or ''."""
    if not notes:
        return ""
    more = "; and more" if len(notes) > 3 else ""
    return f" (the answer is not as expected: {'; '.join(notes[:3])}{more})"


#: notes a stream keeps (a long stream of odd chunks must not grow a list without end)
MAX_NOTES = 10


def _strict_b64(value: str) -> bytes:
    """Strict base64 straight from an ASCII str: binascii reads the str's own buffer (a 30 MB
    image's base64 text is not copied first, as `base64.b64decode` does with str.encode)."""
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except TypeError:  # Python 3.10: no strict_mode
        return base64.b64decode(value, validate=True)


def decode_b64(value: Any, what: str, api_url: str) -> bytes:
    if not isinstance(value, str) or not value:
        what_it_is = "missing" if value is None else "empty" if value == "" else kind_of(value)
        raise NoImageError(200, f"{what} is {what_it_is}, not a base64 string", api_url)
    try:
        return _strict_b64(value)
    except (binascii.Error, ValueError):
        try:  # some gateways send urlsafe or unpadded base64
            return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            raise NoImageError(200, f"{what} is not valid base64 (truncated?)", api_url) from None


_DATA_URL = re.compile(r"^data:([^;,]*)(?:;[^,]*)?;base64,", re.I)


def image_ref_from_url(url: Any, api_url: str, revised_prompt: Optional[str] = None) -> ImageRef:
    """A `data:` URL becomes inline bytes; an http(s) URL is left for the client to download."""
    if url is None or url == "":
        raise NoImageError(200, "an image entry has no URL", api_url)
    if not isinstance(url, str):
        raise NoImageError(200, f"an image entry's URL is {kind_of(url)}, not a string", api_url)
    m = _DATA_URL.match(url)
    if m:
        data = decode_b64(url[m.end():], "an image data URL", api_url)
        return ImageRef(data=data, mime_type=sniff_mime(data) or m.group(1) or None,
                        revised_prompt=revised_prompt)
    if url.startswith(("http://", "https://")):
        return ImageRef(url=url, revised_prompt=revised_prompt)
    raise NoImageError(200, f"an image URL has an unsupported scheme: {url[:40]!r}", api_url)


def parse_size(size: str) -> Tuple[int, int]:
    m = _SIZE.match(size)
    if not m:
        raise RequestError(f"size {size!r} must look like '1024x1024' (width x height) or 'auto'")
    return int(m.group(1)), int(m.group(2))


def parse_ratio(ratio: str) -> Tuple[int, int]:
    m = _RATIO.match(ratio.strip())
    if not m or int(m.group(1)) == 0 or int(m.group(2)) == 0:
        raise RequestError(f"aspect ratio {ratio!r} must look like '16:9'")
    return int(m.group(1)), int(m.group(2))


def nearest(value: float, options: Sequence[Tuple[str, float]]) -> str:
    return min(options, key=lambda o: abs(o[1] - value))[0]


def error_code(err: Dict[str, Any]) -> Optional[str]:
    """The code of a vendor error object: OpenAI's `code` string; for OpenRouter, whose `code` is
    the HTTP status again, the canonical `metadata.error_type` when it is there
    (`content_policy_violation`, `rate_limit_exceeded`, ...)."""
    code = err.get("code")
    meta = err.get("metadata")
    if not isinstance(code, str) and isinstance(meta, dict) and isinstance(meta.get("error_type"), str):
        return meta["error_type"]
    if isinstance(code, str) or (isinstance(code, int) and not isinstance(code, bool)):
        return str(code)
    return None   # a code that is an object, a list, a boolean: not a code


def _upstream(meta: Dict[str, Any]) -> Optional[str]:
    """OpenRouter's `metadata.raw` (what the upstream provider said) as readable words: the
    message inside when it is a JSON error, the text itself otherwise; never raw JSON."""
    raw = meta.get("raw")
    if not said(raw):
        return None
    try:
        inner = load_json_answer(raw)
    except ValueError:   # plain text (AnswerTooDeep is a ValueError too)
        return None if raw.lstrip()[:1] in ("{", "[") else raw
    if isinstance(inner, dict):
        err = inner.get("error")
        msg = said(err.get("message")) if isinstance(err, dict) else said(err)
        return msg or said(inner.get("message"))
    return said(inner) if isinstance(inner, str) else None


def _described(err: Dict[str, Any]) -> str:
    """An error object without a message, in words: its type and code (never the raw JSON)."""
    parts = [f"{k} {err[k]}" for k in ("type", "code") if said(err.get(k)) or isinstance(err.get(k), int)]
    return "the API sent an error without a message" + (f" ({', '.join(parts)})" if parts else "")


def error_message_from_body(status: Optional[int], body: bytes, content_type: str = "") -> Tuple[str, Optional[str]]:
    """A readable message (and error code) from an error body of either vendor, or an HTML page.

    Never the raw body when it is JSON: the vendor's message (OpenAI `error.message`, OpenRouter
    `error.message` with what the upstream provider said from `error.metadata.raw`), or a
    sentence saying what kind of body it was. `ImageAPIError.body` keeps the body itself (the
    magic's --debug shows it)."""
    text = body.decode("utf-8", "replace").strip()
    if text:
        try:
            payload = load_json_answer(text)
        except AnswerTooDeep as e:
            return f"the error body is JSON {e.nesting}; not an error this client understands", None
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            err = payload.get("error")
            if isinstance(err, dict):
                msg = said(err.get("message")) or _described(err)
                meta = err.get("metadata")
                upstream = _upstream(meta) if isinstance(meta, dict) else None
                if upstream and upstream not in msg:
                    who = meta.get("provider_name") if said(meta.get("provider_name")) else "upstream"
                    msg = f"{msg} ({who}: {upstream})"
                return msg, error_code(err)
            if isinstance(err, str) and err.strip():
                return err, None
            for key in ("message", "detail", "error_description"):
                if said(payload.get(key)):
                    return payload[key], None
            keys = ", ".join(str(k) for k in list(payload)[:5])
            return f"HTTP {status} with a JSON body this client does not read (keys: {keys})", None
        if payload is not None:
            return f"HTTP {status} with a JSON {type(payload).__name__} this client does not read", None
        if "html" in content_type.lower() or text.lstrip()[:15].lower().startswith(("<!doctype", "<html")):
            title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
            detail = f" ({title.group(1).strip()[:80]})" if title else ""
            return f"the server answered with an HTML page instead of JSON{detail}; a proxy or gateway may be failing", None
        return text[:300], None
    return f"HTTP {status} with an empty body", None


class Provider:
    """Base class: subclasses set `api_type`, `path`, and implement build() and parse()."""
    api_type = ""
    #: True when one call returns one image, so n > 1 means several calls
    one_image_per_call = True

    def calls_needed(self, r: Resolved) -> int:
        """How many HTTP calls produce r.request.n images (1, or n for a fan-out)."""
        return r.request.n if self.one_image_per_call else 1

    def max_n(self, r: Resolved) -> int:
        return MAX_FANOUT_N if self.one_image_per_call else MAX_N

    def size_hint(self, r: Resolved) -> str:
        """The sizes this API takes for r's model, in words (for an error's suggestion)."""
        return ""

    def replacements(self, r: Resolved) -> List[Replacement]:
        """The fields of r this API cannot take as asked, with what `build` sends instead."""
        return []

    def validate(self, r: Resolved) -> None:
        req = r.request
        if not isinstance(req.n, int) or isinstance(req.n, bool) or not 1 <= req.n <= self.max_n(r):
            raise RequestError(f"n={req.n!r}: ask for 1 to {self.max_n(r)} images with {r.api_type}")
        if req.output_format is not None and req.output_format.lower() not in OUTPUT_FORMATS + ("jpg",):
            raise RequestError(f"output format {req.output_format!r}: use one of {', '.join(OUTPUT_FORMATS)}")
        if req.size and req.aspect_ratio:
            raise RequestError("give either a size or an aspect ratio, not both")
        if req.aspect_ratio:
            parse_ratio(req.aspect_ratio)
        if req.partial_images is not None and (not isinstance(req.partial_images, int) or not 0 <= req.partial_images <= 3):
            raise RequestError(f"partial_images={req.partial_images!r}: ask for 0 to 3 partial images")
        if req.partial_images and not req.stream:
            raise RequestError("partial images need streaming: set stream=True (--stream)")

    def url(self, r: Resolved, path: str) -> str:
        return r.base_url.rstrip("/") + path

    def build(self, r: Resolved) -> HttpCall:  # pragma: no cover - abstract
        raise NotImplementedError

    def parse(self, payload: Any, api_url: str) -> Parsed:  # pragma: no cover - abstract
        raise NotImplementedError

    def stream_state(self, api_url: str) -> "StreamState":  # pragma: no cover - abstract
        raise NotImplementedError


def output_format(req: ImageRequest) -> Optional[str]:
    if not req.output_format:
        return None
    f = req.output_format.lower()
    return "jpeg" if f == "jpg" else f


def no_image_error(api_url: str, text: Optional[str], detail: str = "", *,
                   refused: Optional[str] = None) -> ImageAPIError:
    """A 200 answer without an image: a `NoImageError` (code `no_image`), or a `ContentPolicyError`
    when the answer carries a refusal signal (`refused`: the signal, e.g. `content_filter` or
    `refusal`). The message is the same: what the model said, and why it stopped."""
    said = f" It said: {text.strip()[:400]!r}" if isinstance(text, str) and text.strip() else ""
    message = f"the model returned no image{detail}.{said}"
    if refused:
        return ContentPolicyError(200, message, api_url, code=refused)
    return NoImageError(200, message, api_url, code="no_image")


@dataclass
class PartialImage:
    """A partial (in-progress) image from a stream."""
    data: bytes
    partial_index: int
    image_index: int = 0


def partial_index(value: Any, default: int) -> int:
    """A stream's `partial_image_index` when it is a sane whole number (0-999), else `default`
    (the count of partial images seen before): a string or a float there is not an index."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1000:
        return value
    return default


class StreamBroken(Exception):
    """The stream ended before its final event: the attempt is retried, never returned half-done.
    `connection_lost`: the connection dropped (not a clean end of a stream that is incomplete)."""

    def __init__(self, message: str, *, connection_lost: bool = False):
        super().__init__(message)
        self.connection_lost = connection_lost


class StreamState:
    """Folds a provider's server-sent events into partial images and, at the end, a Parsed result."""

    def __init__(self, api_url: str):
        self.api_url = api_url

    def on_event(self, event: Any) -> List[PartialImage]:  # pragma: no cover - abstract
        raise NotImplementedError

    def finish(self) -> Parsed:  # pragma: no cover - abstract
        raise NotImplementedError


def sse_json(event: Any, api_url: str) -> Dict[str, Any]:
    """The JSON object of one event; anything else means the stream is damaged (retried), except
    JSON nested too deeply: like a 200 body (see `load_json_answer`), not retried."""
    try:
        payload = load_json_answer(event.data)
    except AnswerTooDeep as e:
        raise NoImageError(200, f"a stream event is JSON {e.nesting}; not an event this client "
                                "understands", api_url) from None
    except ValueError:
        raise StreamBroken(f"a stream event is not valid JSON ({event.data[:60]!r})") from None
    if not isinstance(payload, dict):
        raise StreamBroken(f"a stream event is not a JSON object ({event.data[:60]!r})")
    return payload


def raise_stream_error(payload: Any, api_url: str) -> None:
    """An error delivered inside a stream: an `error` object in the event (OpenAI images, OpenRouter
    chunks), or a Responses `{"type": "error", "code", "message", "param"}` event."""
    if not isinstance(payload, dict):
        return
    raise_answer_error(payload, api_url, [], "the stream ended with an error: ")
    if payload.get("type") == "error":
        raise answer_error(payload, api_url, "the stream ended with an error: ")


def raise_answer_error(payload: Dict[str, Any], api_url: str, notes: List[str], prefix: str = "") -> None:
    """Raise the error an answer carries in `error`: an error object, or a message string. Any
    other `error` that is not null or false (a number, a list) is noted and otherwise ignored."""
    err = payload.get("error")
    if isinstance(err, dict):
        raise answer_error(err, api_url, prefix)
    if isinstance(err, str) and err.strip():
        raise answer_error({"message": err}, api_url, prefix)
    if err is not None and err is not False and err != "":
        notes.append(f"error is {kind_of(err)}, not an object")


def answer_error(err: Dict[str, Any], api_url: str, prefix: str = "") -> ImageAPIError:
    """The typed error for an error object found *inside* a 200 answer or stream (never retried):
    OpenRouter's integer `code` is the status the upstream meant, otherwise the answer's 200;
    a moderation code gives a ContentPolicyError (see `errors.api_error_for`)."""
    code = err.get("code")
    # an integer code is a status only when it looks like one (100-599)
    status = code if isinstance(code, int) and not isinstance(code, bool) and 100 <= code <= 599 else 200
    message = said(err.get("message")) or (json.dumps(err)[:300] if err else "an empty error object")
    return api_error_for(status, prefix + message, api_url, code=error_code(err), in_answer=True)
