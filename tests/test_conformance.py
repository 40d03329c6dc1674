"""Conformance against the vendors' published OpenAPI specs, using Prism as a validating mock.

Two Prism mocks run for the whole module (OpenAI's and OpenRouter's spec, from `../shared/specs`
beside the repository, see its README). Prism answers 422 with a `validation` list when a request
violates the spec, and otherwise the spec's example for the endpoint.

1. Every request the client can build (each provider, each option: n, size, quality, output
   format, background, input images, mask, aspect ratio, model) is sent by the real client to the
   mock: none may be rejected, and the client must parse the spec-shaped answer (an image where the
   example has one; a clear "returned no image" error where the example is text only).
2. The emulator against the same specs: raw bodies the spec rejects are sent to both Prism and the
   emulator; the emulator must reject every one of them, and accept the valid ones.

Known Prism/spec quirks are expected failures with their reason (never silent passes):
- `images/edits` with several `image[]` fields: Prism 5.14 only looks for a field named `image`;
- `/responses` with input images: the spec's `InputItem` is a `oneOf` in which a user message with
  a content list matches both `EasyInputMessage` and `Item`/`InputMessage`, so a strict validator
  rejects every such message, whatever its content.

Install Prism with `bash .ci/prism.sh` (npm, into `.prism/`); without it the module skips.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import aiohttp
import pytest
from PIL import Image

from jupyter_imagegen import ImageClient, ImageConfig, ImageRequest
from jupyter_imagegen.providers.openai_images import GPT_IMAGE_QUALITIES, GPT_IMAGE_SIZES, SIZES
from jupyter_imagegen.providers.openrouter_chat import ASPECT_RATIOS, IMAGE_SIZES

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO.parent / "shared" / "specs"
OPENAI_SPEC = SPECS / "openai-openapi.prism.yaml"
OPENROUTER_SPEC = SPECS / "openrouter-openapi.yaml"
PRISM = Path(os.environ.get("PRISM_BIN", REPO / ".prism" / "node_modules" / ".bin" / "prism"))
TOKEN = "sk-conformance-test-token-0123456789"
START_TIMEOUT = 90.0

if not PRISM.exists():
    reason = ("Prism is not installed (run `bash .ci/prism.sh`, which needs npm)"
              if shutil.which("npm") is None else
              f"Prism is not installed at {PRISM.relative_to(REPO) if PRISM.is_relative_to(REPO) else PRISM}: "
              "run `bash .ci/prism.sh`")
    pytest.skip(reason, allow_module_level=True)
if not (OPENAI_SPEC.is_file() and OPENROUTER_SPEC.is_file()):
    pytest.skip(f"the API specs are not at {SPECS} (shared/ must sit beside the repository)",
                allow_module_level=True)

pytestmark = pytest.mark.timeout(180)


# -- Prism processes ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PrismProc:
    spec: Path
    port: int = 0
    proc: Optional[subprocess.Popen] = None
    log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = _free_port()
        self.log = tempfile.NamedTemporaryFile("w+", prefix="prism-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [str(PRISM), "mock", "-h", "127.0.0.1", "-p", str(self.port), str(self.spec)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prism exited with {self.proc.returncode} for {self.spec.name}:\n{self.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def tail(self, n: int = 4000) -> str:
        try:
            return Path(self.log.name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # prism runs node children in its own group
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.log is not None:
            self.log.close()
            os.unlink(self.log.name)


@pytest.fixture(scope="module")
def prisms():
    """Both mocks, started in parallel (start-up is mostly parsing the 2 MB OpenAI spec)."""
    procs = {"openai": PrismProc(OPENAI_SPEC), "openrouter": PrismProc(OPENROUTER_SPEC)}
    try:
        for p in procs.values():
            p.start()
        deadline = time.monotonic() + START_TIMEOUT
        pending = set(procs)
        while pending:
            pending = {k for k in pending if not procs[k].ready()}
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"prism did not listen within {START_TIMEOUT:.0f} s for {sorted(pending)}:\n"
                                   + "\n".join(procs[k].tail() for k in pending))
            time.sleep(0.2)
        yield procs
    finally:
        for p in procs.values():
            p.stop()


def prism_url_for(prisms, api_type: str) -> str:
    return prisms["openrouter" if api_type == "openrouter_chat" else "openai"].url


# -- test images ---------------------------------------------------------------------------------
def _png(color, mode="RGB", size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


PNG_A = _png("red")
PNG_B = _png("blue")
MASK = _png((0, 0, 0, 0), "RGBA")


# -- the requests the client can build -----------------------------------------------------------
@dataclass
class Case:
    api_type: str
    kw: Dict[str, Any] = field(default_factory=dict)
    model: Optional[str] = None
    quirk: Optional[str] = None     # a known Prism/spec problem: the test is an expected failure

    @property
    def id(self) -> str:
        parts = [self.api_type, self.model or "default"]
        for k, v in self.kw.items():
            if k == "images":
                v = f"{len(v)}img"
            elif k == "mask":
                v = "png"
            elif isinstance(v, dict):
                v = ",".join(f"{a}={b}" for a, b in v.items())
            parts.append(f"{k}={v}")
        return "-".join(str(p) for p in parts).replace(" ", "")


QUIRK_EDITS_ARRAY = ("Prism 5.14 rejects images/edits with several `image[]` fields (it wants a field named "
                     "`image`); `image[]` is what OpenAI documents and its SDK sends")
QUIRK_RESPONSES_ONEOF = ("the OpenAI spec's InputItem oneOf is ambiguous: a user message with a content list "
                         "matches both EasyInputMessage and Item/InputMessage, so Prism rejects every "
                         "`/responses` request with input images")

ALL_OPTIONS = dict(size="1536x1024", quality="high", output_format="webp", background="transparent")


def _cases() -> List[Case]:
    c: List[Case] = []
    # OpenAI images: gpt-image models
    for model in ("gpt-image-1", "gpt-image-1-mini"):
        c.append(Case("openai_images", {}, model))
    for n in (2, 4, 10):
        c.append(Case("openai_images", {"n": n}, "gpt-image-1"))
    c += [Case("openai_images", {"size": s}, "gpt-image-1") for s in GPT_IMAGE_SIZES]
    c += [Case("openai_images", {"quality": q}, "gpt-image-1") for q in GPT_IMAGE_QUALITIES]
    c += [Case("openai_images", {"output_format": f}, "gpt-image-1") for f in ("png", "jpeg", "webp", "jpg")]
    c += [Case("openai_images", {"background": b}, "gpt-image-1") for b in ("transparent", "opaque", "auto")]
    c += [Case("openai_images", {"aspect_ratio": a}, "gpt-image-1") for a in ASPECT_RATIOS]
    c.append(Case("openai_images", dict(n=3, **ALL_OPTIONS), "gpt-image-1"))
    c.append(Case("openai_images", {"params": {"moderation": "low", "output_compression": 80, "user": "u1"},
                                    "output_format": "jpeg"}, "gpt-image-1"))
    # edits (multipart)
    c.append(Case("openai_images", {"images": [PNG_A]}, "gpt-image-1"))
    c.append(Case("openai_images", dict(images=[PNG_A], n=2, **ALL_OPTIONS), "gpt-image-1"))
    c.append(Case("openai_images", {"images": [PNG_A], "mask": MASK}, "gpt-image-1"))
    c.append(Case("openai_images", {"images": [PNG_A], "aspect_ratio": "2:3",
                                    "params": {"input_fidelity": "high"}}, "gpt-image-1"))
    c.append(Case("openai_images", {"images": [PNG_A, PNG_B]}, "gpt-image-1", quirk=QUIRK_EDITS_ARRAY))
    # dall-e
    c += [Case("openai_images", {"size": s}, "dall-e-3") for s in SIZES["dall-e-3"]]
    c += [Case("openai_images", {"quality": q}, "dall-e-3") for q in ("standard", "hd")]
    c.append(Case("openai_images", {"n": 2, "aspect_ratio": "16:9", "params": {"style": "natural"}}, "dall-e-3"))
    c += [Case("openai_images", {"size": s}, "dall-e-2") for s in SIZES["dall-e-2"]]
    c.append(Case("openai_images", {"n": 3, "quality": "standard"}, "dall-e-2"))
    c.append(Case("openai_images", {"images": [PNG_A], "size": "512x512"}, "dall-e-2"))
    c.append(Case("openai_images", {"images": [PNG_A], "mask": MASK}, "dall-e-2"))

    # OpenAI responses + image_generation tool
    c.append(Case("openai_responses", {}))
    c.append(Case("openai_responses", {}, "gpt-4.1"))
    c.append(Case("openai_responses", {"n": 2}))
    c += [Case("openai_responses", {"size": s}) for s in GPT_IMAGE_SIZES]
    c += [Case("openai_responses", {"quality": q}) for q in GPT_IMAGE_QUALITIES]
    c += [Case("openai_responses", {"output_format": f}) for f in ("png", "jpeg", "webp", "jpg")]
    c += [Case("openai_responses", {"background": b}) for b in ("transparent", "opaque", "auto")]
    c += [Case("openai_responses", {"aspect_ratio": a}) for a in ("1:1", "16:9", "9:16", "21:9")]
    c.append(Case("openai_responses", dict(ALL_OPTIONS, params={"tool": {"model": "gpt-image-1-mini",
                                                                          "moderation": "low"}})))
    c.append(Case("openai_responses", {"images": [PNG_A]}, quirk=QUIRK_RESPONSES_ONEOF))
    c.append(Case("openai_responses", dict(images=[PNG_A, PNG_B], **ALL_OPTIONS), quirk=QUIRK_RESPONSES_ONEOF))

    # OpenRouter chat completions
    for model in ("google/gemini-2.5-flash-image", "openai/gpt-5-image-mini"):
        c.append(Case("openrouter_chat", {}, model))
    c.append(Case("openrouter_chat", {"n": 3}))
    c += [Case("openrouter_chat", {"aspect_ratio": a}) for a in ASPECT_RATIOS]
    c += [Case("openrouter_chat", {"size": s}) for s in IMAGE_SIZES + ("1536x1024", "1024x1024", "auto")]
    c += [Case("openrouter_chat", {"quality": q}) for q in ("low", "high")]
    c += [Case("openrouter_chat", {"output_format": f}) for f in ("png", "jpeg", "webp", "jpg")]
    c += [Case("openrouter_chat", {"background": b}) for b in ("transparent", "opaque")]
    c.append(Case("openrouter_chat", {"images": [PNG_A]}))
    c.append(Case("openrouter_chat", {"images": [PNG_A, PNG_B], "aspect_ratio": "16:9", "quality": "high",
                                      "output_format": "jpeg", "background": "opaque", "n": 2}))
    c.append(Case("openrouter_chat", {"size": "2K", "params": {"image_config": {"aspect_ratio": "3:2"},
                                                               "temperature": 0.5, "seed": 7}}))
    return c


CASES = _cases()


def _quirk_matches(quirk: str, validation: Any) -> bool:
    """True when Prism's complaint is exactly the known quirk (and nothing else is wrong)."""
    if not isinstance(validation, list) or not validation:
        return False
    if quirk == QUIRK_EDITS_ARRAY:
        return all(v.get("location") == ["body"] and v.get("code") == "required"
                   and "'image'" in v.get("message", "") for v in validation)
    if quirk == QUIRK_RESPONSES_ONEOF:
        # only the oneOf ambiguity at input / input[i] (and "input must be string" from the other
        # branch); an error inside a content part would be a real problem of ours
        return all(v.get("location", [])[:2] == ["body", "input"] and len(v.get("location")) <= 3
                   and v.get("code") in ("oneOf", "type") for v in validation)
    return False


async def _validation_details(client: ImageClient, request: ImageRequest):
    """Re-send the built call with aiohttp to show Prism's whole `validation` list in a failure."""
    resolved, provider = client.resolve(request)
    call = provider.build(resolved)
    kwargs: Dict[str, Any] = {"headers": {"Authorization": f"Bearer {TOKEN}"}}
    if call.form is not None:
        form = aiohttp.FormData()
        for f in call.form:
            if f.filename is not None:
                form.add_field(f.name, f.value, filename=f.filename, content_type=f.content_type)
            else:
                form.add_field(f.name, f.value)
        kwargs["data"] = form
        sent = [(f.name, f.filename or f.value) for f in call.form]
    else:
        kwargs["json"] = call.json
        sent = json.dumps(call.json)[:600]
    async with aiohttp.ClientSession() as s:
        async with s.post(call.url, **kwargs) as resp:
            body = await resp.text()
    try:
        validation = json.loads(body).get("validation")
        details = json.dumps(validation, indent=1)
    except (ValueError, AttributeError):
        validation, details = None, body[:2000]
    return validation, f"sent {sent}\nPrism said:\n{details}"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
async def test_client_requests_conform_to_spec(prisms, case: Case):
    base = prism_url_for(prisms, case.api_type)
    cfg = ImageConfig(api_type=case.api_type, base_url=base, token=TOKEN, model=case.model,
                      max_attempts=1, backoff_base=0, timeout=30, max_concurrency=4)
    kw = dict(case.kw)
    request = ImageRequest("a lighthouse at dusk, watercolour", **kw)
    calls: List[Any] = []
    async with ImageClient(cfg, on_event=lambda e: calls.append(e) if e.type == "api_call" else None) as client:
        resp = await client.generate(request)
        assert calls, "the client sent nothing"
        rejected = resp.status_code in (400, 422) or bool(resp.error and "UNPROCESSABLE_ENTITY" in resp.error)
        if rejected:
            validation, details = await _validation_details(client, request)
            if case.quirk and _quirk_matches(case.quirk, validation):
                pytest.xfail(f"known spec/Prism quirk: {case.quirk}")
            pytest.fail(f"the spec rejects this request (HTTP {resp.status_code}): {details}")
        if case.quirk:
            pytest.fail(f"expected the known quirk ({case.quirk}) but Prism accepted the request: "
                        "the quirk is gone, drop it from this case")
        assert resp.status_code in (None, 200), resp.error

    expected_calls = client.resolve(request)[1].calls_needed(client.resolve(request)[0])
    assert len(calls) == expected_calls
    if case.api_type == "openai_images":
        # the spec's example: one `data` item whose b64_json is a real 1x1 PNG
        assert resp.success, resp.error
        assert len(resp.artifacts) == expected_calls
        art = resp.artifacts[0]
        assert art.mime_type == "image/png" and art.size == (1, 1)
        assert resp.revised_prompt == "string"
        assert resp.usage is not None and resp.usage.total_tokens == 0
    else:
        # the specs' examples for /responses and /chat/completions are text only: the client must
        # say so clearly, quoting what the "model" said, rather than crash or report success
        assert not resp.success and resp.artifacts == []
        assert resp.status_code == 200
        assert "returned no image" in resp.error
        example = "The capital of France is Paris." if case.api_type == "openrouter_chat" else "scenic landscape"
        assert example in resp.error
        assert len(resp.errors) == expected_calls
