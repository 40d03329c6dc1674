"""One API call as the handlers see it (:class:`Call`: the request, the state, the API, the
vendor, the fault, the log entry, extra response headers) and what it draws (:class:`Generated`),
with what every wire format's handler shares: drawing in worker threads, resolving input images,
naming the prompt in the answer's text."""
from __future__ import annotations

import asyncio
import base64
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from .faults import Fault
from .images import MIME_BY_FORMAT, RenderSpec, cut_image, open_image, parse_data_url, placeholder_image, render, stamp_text
from .state import EmulatorState
from .validate import OPENROUTER, ApiError, RequestImage


@dataclass
class Generated:
    """One drawn image."""
    data: bytes
    mime: str
    fmt: str
    width: int
    height: int
    revised_prompt: Optional[str] = None

    @property
    def b64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")


@dataclass
class Call:
    request: web.Request
    state: EmulatorState
    api: str
    vendor: str
    fault: Optional[Fault]
    entry: Dict[str, Any]
    headers: Dict[str, str] = field(default_factory=dict)   # extra response headers

    @property
    def fault_name(self) -> Optional[str]:
        return self.fault.name if self.fault else None

    @property
    def base_url(self) -> str:
        return f"{self.request.scheme}://{self.request.host}"

    def file_url(self, g: Generated) -> str:
        return f"{self.base_url}/files/{self.state.store_file(g.data, g.mime)}"

    async def draw(self, specs: List[RenderSpec]) -> List[Generated]:
        """Render in worker threads (the loop stays free for other requests)."""
        loop = asyncio.get_running_loop()
        self.entry["stamps"] = [stamp_text(s) for s in specs]   # what each picture says in its corner
        datas = await asyncio.gather(*(loop.run_in_executor(None, render, s) for s in specs))
        if self.fault_name == "cut_image":
            datas = [cut_image(d) for d in datas]
        return [Generated(d, MIME_BY_FORMAT[s.fmt], s.fmt, s.width, s.height) for d, s in zip(datas, specs)]

    async def resolve_image(self, ref: RequestImage) -> bytes:
        """The bytes of an input image reference, validated as a decodable image."""
        data = ref.data
        if ref.file_id is not None and data is None and ref.url is None:
            raise self._image_error(ref, f"No such File object: {ref.file_id}", status=404, code=None)
        if data is None:
            url = ref.url or ""
            if url.startswith("data:"):
                try:
                    _, data = parse_data_url(url)
                except ValueError:
                    raise self._image_error(
                        ref, f"Invalid '{ref.param}'. Expected a base64-encoded data URL with an image MIME "
                             "type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got an invalid "
                             "value.", code="invalid_value") from None
            elif url.startswith(("http://", "https://")):
                data = await self._fetch(ref, url)
            else:
                raise self._image_error(ref, f"Invalid '{ref.param}': expected a URL (http, https or data:), "
                                             f"got {url[:40]!r}.", code="invalid_value")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, open_image, data)
        except ValueError:
            raise self._image_error(
                ref, "The image data you provided does not represent a valid image. Please check your "
                     "input and try again with one of the supported image formats: ['image/jpeg', "
                     "'image/png', 'image/gif', 'image/webp'].", code="invalid_image_format") from None
        return data

    async def _fetch(self, ref: RequestImage, url: str) -> bytes:
        parts = urlsplit(url)
        if parts.path.startswith("/files/") and (parts.netloc == self.request.host or _is_loopback(parts.hostname)):
            got = self.state.get_file(parts.path[len("/files/"):])
            if got is not None:
                return got[0]
        if not _is_loopback(parts.hostname):
            # offline: a stand-in picture instead of the remote one
            return placeholder_image(f"remote input image (not fetched by the offline emulator): {url}")
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
                async with s.get(url) as r:
                    if r.status != 200:
                        raise ValueError(f"HTTP {r.status}")
                    return await r.content.read(64 * 1024 * 1024)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            raise self._image_error(ref, f"Error while downloading {url}.", code="invalid_image_url") from None

    def _image_error(self, ref: RequestImage, message: str, *, code: Optional[str], status: int = 400) -> ApiError:
        if self.vendor == OPENROUTER:
            return ApiError(400, "Provider returned error",
                            metadata={"raw": "Unable to process input image. Please retry or report in "
                                             "https://developers.generativeai.google/guide/troubleshooting",
                                      "provider_name": "Google"})
        return ApiError(status, message, param=ref.param, code=code)


def _is_loopback(host: Optional[str]) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host)._is_loopback
    except ValueError:
        return False


def short_prompt(prompt: str, limit: int = 120) -> str:
    """The prompt on one line, at most ``limit`` characters (how an answer's text names it)."""
    s = " ".join(prompt.split())
    return s if len(s) <= limit else s[: limit - 1].rstrip() + "\u2026"
