"""The API key never leaves the Authorization header of an API call.

Checked with a recognisable fake key (and its middle part, which no mask ever shows) in:
events, errors, suggestions, reprs, logs at DEBUG, the kernel history, the request cache on
disk, saved images and their sidecars, the magic's display messages, and the executed notebooks
(quickstart, widget, reliability through nbclient in a real kernel, every file they wrote).
Servers that echo the request back (a 400/500/502 body, an HTML title, a model's text, a
revised prompt, a no-image explanation) are scrubbed, even when the echo is longer than the
part of the body the error message keeps; a redirect to another origin and image downloads
never receive the key.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import sys
from pathlib import Path

import pytest
from aiohttp import web

from _image_helpers import make_png
from _reliab_helpers import Recorder, TinyServer
from jupyter_imagegen import ImageClient, ImageConfig, ImageRequest
from kernels import kernel_env, message_text, run_notebook, running_kernel, strip_ansi

TOKEN = "sk-FAKE-imagegen-SECRET-TOKEN-5e1f2a3b4c5d6e7f"
ROOT = Path(__file__).resolve().parent.parent


#: every 12-character piece of the key: a mask shows 4 + 4, so any of these in a text is a leak
#: (a whole key, its middle part, or a key cut short by whatever truncated the text)
PIECES = [TOKEN[i:i + 12] for i in range(len(TOKEN) - 11)]


def leaks(text: str):
    """The pieces of the key found in `text` (empty when clean)."""
    return [s for s in PIECES if s in text]


def tree_leaks(root: Path):
    """Files under `root` (binary included: embedded image metadata) that hold the secret."""
    bad = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            for s in PIECES:
                if s.encode() in data or s.encode("utf-16-le") in data:
                    bad.append(f"{p.relative_to(root)} holds {s!r}")
    return bad


# ---------------------------------------------------------------------------------------------
# a server that echoes the request back, in every place an answer can carry text
# ---------------------------------------------------------------------------------------------
def _png_b64() -> str:
    return base64.b64encode(make_png()).decode()


async def _echo(request: web.Request):
    kind = request.headers.get("X-Kind", "")
    if not kind and request.content_type == "application/json":
        kind = str((await request.json()).get("prompt", ""))      # the magic cannot set headers
    auth = request.headers.get("Authorization", "")
    dump = json.dumps(dict(request.headers))
    if kind == "400-json":
        return web.json_response({"error": {"message": f"invalid header: {auth}", "type": "invalid_request_error"}},
                                 status=400)
    if kind == "400-long":        # the key straddles the 300 characters the message keeps
        return web.Response(text="x" * 259 + " headers: " + auth, status=400)
    if kind == "400-meta":        # OpenRouter's metadata.raw, cut at 200
        return web.json_response({"error": {"code": 400, "message": "Provider returned error",
                                            "metadata": {"raw": "y" * 169 + auth}}}, status=400)
    if kind == "500-headers":     # retried: the api_retry events carry the reason
        return web.Response(text=f"upstream failed; request was {dump}", status=500)
    if kind == "502-html":
        return web.Response(text=f"<!DOCTYPE html><html><head><title>{'z' * 49}{auth}</title></head></html>",
                            status=502, content_type="text/html")
    if kind == "200-text":        # a chatty model repeats the request
        return web.json_response({"id": "x", "choices": [{"message": {
            "content": f"you sent {auth}", "images": [{"type": "image_url", "image_url": {
                "url": "data:image/png;base64," + _png_b64()}}]}}]})
    if kind == "200-no-image":
        return web.json_response({"id": "x", "choices": [{"message": {"content": f"no picture; you sent {auth}"}}]})
    if kind == "200-revised":
        return web.json_response({"created": 1, "data": [{"b64_json": _png_b64(), "revised_prompt": f"a fox {auth}"}]})
    if kind == "200-url":
        return web.json_response({"created": 1, "data": [{"url": f"http://127.0.0.1:{request.url.port}/img.png"}]})
    key = auth.partition(" ")[2]
    if kind == "200-usage":       # the request echoed back in `usage` (kept whole in usage.raw and the cache)
        return web.json_response({"created": 1, "data": [{"b64_json": _png_b64()}], "usage": {
            "total_tokens": 5, "echo": {"headers": dict(request.headers), "list": [auth, {auth: key}]}}})
    if kind == "200-model":       # in the model name and usage of a chat answer
        return web.json_response({"id": "x", "model": f"echo/{key}", "usage": {"note": auth}, "choices": [
            {"message": {"content": "", "images": [{"type": "image_url", "image_url": {
                "url": "data:image/png;base64," + _png_b64()}}]}}]})
    if kind in ("200-escaped", "400-escaped"):   # spelled with JSON escapes: no plain text of it in the body
        doc = ({"created": 1, "data": [{"b64_json": _png_b64(), "revised_prompt": f"fox {auth}"}],
                "usage": {"note": auth}} if kind == "200-escaped"
               else {"error": {"message": f"bad key {auth}", "type": "invalid_request_error", "param": auth}})
        text = json.dumps(doc).replace(key, "".join(f"\\u{ord(c):04x}" for c in key))
        assert key not in text
        return web.Response(text=text, status=200 if kind == "200-escaped" else 400, content_type="application/json")
    if kind == "200-url-key":     # the key in the image URL's path (and query)
        return web.json_response({"created": 1, "data": [
            {"url": f"http://127.0.0.1:{request.url.port}/img/{key}/fox.png?sig={key}"}]})
    if kind == "200-url-key-pct":  # the same, percent-encoded (one character, then all of them)
        return web.json_response({"created": 1, "data": [
            {"url": f"http://127.0.0.1:{request.url.port}/img/%{ord(key[0]):02X}{key[1:]}/fox.png"},
            {"url": f"http://127.0.0.1:{request.url.port}/img/" + "".join(f"%{ord(c):02X}" for c in key)}]})
    if kind == "400-mixed":        # one character \\x-escaped, another percent-encoded, past a cut
        spelled = key[:10] + f"\\x{ord(key[10]):02x}" + key[11:30] + f"%{ord(key[30]):02X}" + key[31:]
        return web.json_response({"error": {"message": "y" * 250 + " bad key " + spelled}}, status=400)
    if kind == "200-url-ctype":    # the image host names the key in its content type (we lower-case it)
        return web.json_response({"created": 1, "data": [{"url": f"http://127.0.0.1:{request.url.port}/ctype.png"}]})
    if kind == "200-url-cut":      # an unusable URL whose message keeps 40 characters: scrubbed first
        return web.json_response({"created": 1, "data": [{"url": "ftp://a/" + key}]})
    if kind == "400-cut":          # the key past the 300 characters an error message keeps, \u-escaped
        body = '{"error": "' + "e" * 290 + "\\u0073" + key[1:] + '"} trailing'
        return web.Response(text=body, status=400, content_type="application/json")
    return web.json_response({"created": 1, "data": [{"b64_json": _png_b64()}]})


async def _img(request):
    return web.Response(body=make_png(), content_type="image/png")


async def _ctype(request):
    return web.Response(body=b"not an image", headers={"Content-Type": f"text/x-{TOKEN}"})


ECHO_CASES = [
    ("openai_images", "400-json", False), ("openai_images", "400-long", False),
    ("openrouter_chat", "400-meta", False), ("openai_images", "500-headers", False),
    ("openai_images", "502-html", False), ("openrouter_chat", "200-text", True),
    ("openrouter_chat", "200-no-image", False), ("openai_images", "200-revised", True),
    ("openai_images", "200-url", True), ("openai_images", "200-usage", True),
    ("openrouter_chat", "200-model", True), ("openai_images", "200-escaped", True),
    ("openai_images", "400-escaped", False), ("openai_images", "200-url-key", False),
    ("openai_images", "200-url-key-pct", False), ("openai_images", "200-url-cut", False),
    ("openai_images", "400-cut", False), ("openai_images", "400-mixed", False),
    ("openai_images", "200-url-ctype", False),
]


async def test_client_output_never_holds_the_key(emulator, tmp_path, caplog):
    """Every place a client call can put text, over the emulator and over echoing servers."""
    from jupyter_imagegen import history, saving
    caplog.set_level(logging.DEBUG)
    history.clear()
    cache_dir = tmp_path / "cache"
    saved_dir = tmp_path / "saved"
    seen = []            # (label, text) of everything a user could see or keep

    async with TinyServer({"/v1/{tail:.*}": _echo, "/img.png": _img, "/img/{tail:.*}": _img, "/ctype.png": _ctype}) as echo, \
            TinyServer({"/v1/{tail:.*}": _echo}) as other_origin:

        async def redirect(request):
            raise web.HTTPTemporaryRedirect(other_origin.url + request.path)

        async with TinyServer({"/v1/{tail:.*}": redirect}) as redirector:
            runs = []
            for api in ("openrouter_chat", "openai_images", "openai_responses"):
                for faults in ([], ["401"], ["429:retry_after=0", "reset", "ok"], ["no_image"], ["url"]):
                    runs.append((api, emulator.base_url_for(api), faults, {}))
            for api, kind, _ok in ECHO_CASES:
                runs.append((api, echo.url + "/v1", [], {"X-Kind": kind}))
            runs.append(("openai_images", redirector.url + "/v1", [], {}))

            cfg = ImageConfig(api_type="openai_images", token=TOKEN, backoff_base=0.01, max_attempts=2,
                              cache=True, cache_dir=str(cache_dir))
            client = ImageClient(cfg)
            seen.append(("client repr", repr(client)))
            seen.append(("config repr", repr(cfg) + str(cfg.auth_hint) + cfg.masked_token))
            for api, base, faults, headers in runs:
                emulator.add_faults(*faults)
                rec = Recorder()
                req = ImageRequest(f"a fox {api} {faults} {headers}", api_type=api, base_url=base,
                                   headers=dict(headers), fresh=True)
                resp = await client.generate(req, on_event=rec)
                label = f"{api} {faults} {headers}"
                seen.append((f"{label} events", "\n".join(repr(e.to_dict()) + e.describe() for e in rec.events)))
                seen.append((f"{label} response", "\n".join([
                    repr(resp), str(resp.error), str(resp.text), str(resp.revised_prompt), str(resp.auth_hint),
                    " ".join(resp.suggestions), " ".join(resp.errors), repr(resp.request),
                    " ".join(repr(a) + str(a.revised_prompt) + str(a.source_url) for a in resp.artifacts)])))
                if not resp.success:
                    try:
                        resp.raise_for_error()
                    except Exception as e:
                        seen.append((f"{label} raised", f"{e!r} {e}"))
                from jupyter_imagegen.display import response_mimebundle
                seen.append((f"{label} display", json.dumps(response_mimebundle(resp), default=str)))
                history.record(resp, request=req)
                if resp.artifacts:
                    saving.save_response(resp, saved_dir, request=req)
            # the same request with the key passed per call, not from the config
            per_call = ImageRequest("a per-call key", api_type="openai_images",
                                    base_url=emulator.base_url_for("openai_images"), token=TOKEN)
            seen.append(("request repr", repr(per_call)))
            async with ImageClient(ImageConfig(api_type="openai_images", token=None)) as per_call_client:
                r2 = await per_call_client.generate(per_call)
            seen.append(("per-call response", repr(r2) + str(r2.auth_hint)))
            history.record(r2, request=per_call)
            await client.close()
        hits = other_origin.hits + [h for h in echo.hits if h["path"].startswith("/img")]

    # history: its table, text, reprs, and the requests it would re-run
    seen.append(("history", history.text(None) + history.table_html(None) + repr(history)))
    for entry in history.entries():
        seen.append((f"history #{entry.number}", repr(entry) + entry.summary() + json.dumps(
            entry._repr_mimebundle_(), default=str)))
        assert entry.to_request().token is None
        assert not leaks(json.dumps(entry.to_request().headers))
    seen.append(("logs", caplog.text))

    problems = [f"{label}: {leaks(text)}" for label, text in seen if leaks(text)]
    assert not problems, "\n".join(problems)
    assert "sk-F...6e7f" in "".join(t for _, t in seen), "the masked key is what is shown"
    assert any(cache_dir.rglob("*")) and any(saved_dir.rglob("*.json")), "nothing was cached or saved"
    assert not tree_leaks(cache_dir) and not tree_leaks(saved_dir), tree_leaks(cache_dir) + tree_leaks(saved_dir)
    # the redirect to another origin and the image download got no key
    assert hits and all("Authorization" not in h["headers"] and not leaks(json.dumps(h["headers"])) for h in hits)
    # and the emulator's request log never held it either
    assert emulator.request_count > 10
    history.clear()


@pytest.mark.parametrize("api, kind, ok", ECHO_CASES, ids=[c[1] for c in ECHO_CASES])
async def test_echoed_headers_are_scrubbed(api, kind, ok):
    async with TinyServer({"/v1/{tail:.*}": _echo, "/img.png": _img, "/img/{tail:.*}": _img, "/ctype.png": _ctype}) as echo:
        cfg = ImageConfig(api_type=api, base_url=echo.url + "/v1", token=TOKEN, backoff_base=0.01, max_attempts=2)
        rec = Recorder()
        async with ImageClient(cfg) as client:
            resp = await client.generate(ImageRequest("a fox", headers={"X-Kind": kind}), on_event=rec)
    assert resp.success is ok, resp.error
    exc = resp.exception
    text = " ".join([str(resp.error), str(resp.text), str(resp.revised_prompt), repr(resp), str(resp.model),
                     json.dumps(resp.usage.raw if resp.usage else None), repr(resp.usage),
                     " ".join(f"{a.revised_prompt} {a.source_url}" for a in resp.artifacts),
                     "" if exc is None else f"{exc!r} {exc.body} {exc.code} {exc.api_url}"]
                    + [repr(e.to_dict()) for e in rec.events])
    assert not leaks(text), text
    if kind in ("400-json", "200-text", "200-revised", "200-usage", "200-escaped", "400-escaped"):
        assert "Bearer sk-F...6e7f" in text, "the echo is kept, masked"
    if kind.startswith("200-url-key"):   # a URL that carries the key is not fetched at all
        assert not [h for h in echo.hits if h["path"].startswith("/img")], echo.hits
        assert "the URL carried your key" in resp.error and "sk-F...6e7f" in resp.error, resp.error
    # the sent request did carry the key (the scrubbing is not a mistake in what was sent)
    assert any(h["headers"].get("Authorization") == f"Bearer {TOKEN}" for h in echo.hits)


# ---------------------------------------------------------------------------------------------
# the magic: display messages, printed output, history, saved files
# ---------------------------------------------------------------------------------------------
def test_magic_output_never_holds_the_key(ip, emulator_thread, emulator_env, monkeypatch, tmp_path, capsys,
                                          caplog):
    from jupyter_imagegen import history
    from jupyter_imagegen.runtime import runtime
    caplog.set_level(logging.DEBUG)
    shell, rec = ip
    emulator_env(emulator_thread, cache=True, max_attempts=2)     # the magic's default: cache on
    history.clear()

    loop = asyncio.new_event_loop()
    echo = TinyServer({"/v1/{tail:.*}": _echo})
    import threading
    ready = threading.Event()

    def serve():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(echo.__aenter__())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(echo.__aexit__(None, None, None))
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    ready.wait(10)
    shell.user_ns["echo_url"] = echo.url + "/v1"
    cells = [
        "%%imagegen --save out --out ok1\na lighthouse",
        "%%imagegen --fault 401 --out refused\na lighthouse",
        "%%imagegen --fault 503 --fault 503 --out gave_up\na lighthouse",
        "%%imagegen --base-url {echo_url}\n200-revised",
        "%imagegen_history",
        "print(refused.error, refused.suggestions, refused.auth_hint); refused",
        "print(repr(ok1.request), ok1.request.headers)",
    ]
    try:
        for code in cells:
            shell.run_cell(code, store_history=False)
        # the echo server: its 400 echoes the Authorization header
        monkeypatch.setenv("IMAGE_BASE_URL", echo.url + "/v1")
        for kind in ("400-json", "400-long", "502-html", "500-headers", "200-revised"):
            shell.run_cell(f"%%imagegen --save out --out echoed\n{kind}", store_history=False)
    finally:
        runtime.close()
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
    out = capsys.readouterr()
    everything = json.dumps(rec.messages, default=str) + out.out + out.err + caplog.text + history.text(None) \
        + history.table_html(None)
    assert not leaks(everything), leaks(everything)
    assert "sk-F...6e7f" in everything
    assert (tmp_path / "out").is_dir() and any((tmp_path / "out").glob("*.json"))
    assert not tree_leaks(tmp_path), tree_leaks(tmp_path)
    assert len(rec.messages) > 10
    history.clear()


# ---------------------------------------------------------------------------------------------
# the notebooks, executed in a real kernel with the fake key
# ---------------------------------------------------------------------------------------------
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
#: the throwaway key a notebook makes for its own emulator (reliability.ipynb always does)
NOTEBOOK_KEY = re.compile(r"emulator-[0-9a-f]{16}")


@pytest.mark.kernel
@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_run_with_a_fake_key_leaves_no_trace(path, tmp_path, tmp_path_factory, emulator_thread):
    """IMAGE_AUTH_TOKEN holds the fake key and IMAGE_BASE_URL points at an emulator that
    accepts only it, so the notebook takes its "your API" branch and really uses the key."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    setup = nb.cells[[c.cell_type for c in nb.cells].index("code")].source
    uses_env_key = "IMAGE_AUTH_TOKEN" in setup and "if " in setup
    # the form and the iterate notebook are written for the OpenAI images API's model names
    api = "openai_images" if path.name in ("widget.ipynb", "iterate.ipynb") else "openrouter_chat"
    work = tmp_path / "work"
    home = tmp_path / "home"
    work.mkdir()
    home.mkdir()
    # (kernel_env drops every IMAGE* setting of the developer, IMAGEGEN_EMULATOR included)
    env = kernel_env(sys.executable, IMAGE_AUTH_TOKEN=TOKEN, IMAGE_API_TYPE=api,
                     IMAGE_BASE_URL=emulator_thread.base_url_for(api), IMAGE_CACHE_DIR=str(tmp_path / "cache"),
                     IMAGEGEN_OUT=str(tmp_path / "out"), HOME=str(home))
    before = emulator_thread.request_count
    # the kernel's own files (kernelspec, stderr) outside tmp_path, which is searched for the key
    with running_kernel(sys.executable, env=env, cwd=work, workdir=tmp_path_factory.mktemp("kernel")) as kernel:
        run_notebook(kernel, nb, timeout=120)
    executed = work / f"executed-{path.name}"
    nbformat.write(nb, executed)

    text = executed.read_text()
    assert not leaks(text), f"{path.name}: {leaks(text)}"
    assert not NOTEBOOK_KEY.search(text), f"{path.name} shows its emulator's key: {NOTEBOOK_KEY.search(text)[0]}"
    assert not tree_leaks(tmp_path), tree_leaks(tmp_path)
    for p in tmp_path.rglob("*"):
        if p.is_file() and p.suffix in (".json", ".ipynb", ".txt", ".log", ".png", ".jpg", ".webp"):
            m = NOTEBOOK_KEY.search(p.read_bytes().decode("latin-1"))
            assert not m, f"{p.relative_to(tmp_path)} holds a notebook's emulator key {m[0]}"
    if uses_env_key:
        # the fake key was really used: the emulator accepts nothing else
        assert emulator_thread.request_count > before, f"{path.name} sent nothing with the fake key"
        assert all(r.get("auth") == "ok" for r in emulator_thread.requests[before:] if r.get("auth"))
        assert "(IMAGE_AUTH_TOKEN is set; it is not shown)" in text


# ---------------------------------------------------------------------------------------------
# %xmode Verbose: tracebacks print the values of every frame's variables
# ---------------------------------------------------------------------------------------------
VERBOSE_CELLS = [
    # 1. an exception from deep inside a call: through generate, the retry loop, the attempt and
    #    the frame that holds the request's headers (aiohttp's request made to fail with a
    #    BaseException, which the client's last-resort `except Exception` lets through)
    """import aiohttp
from jupyter_imagegen import ImageClient, ImageConfig, ImageRequest
cfg = ImageConfig.from_env(max_attempts=1)
client = ImageClient(cfg)
_real = aiohttp.ClientSession._request
class TransportBroke(BaseException):
    pass
def _broken(self, *a, **kw):
    raise TransportBroke("the transport broke")
aiohttp.ClientSession._request = _broken
try:
    client.generate_sync(ImageRequest("a fox"))
finally:
    aiohttp.ClientSession._request = _real""",
    # 2. the typed error of a refused call (a 401), raised on purpose
    """resp = client.generate_sync(ImageRequest("a fox", headers={"X-Emulator-Fault": "401"}))
resp.raise_for_error()""",
    # 3. a request refused before sending, the key passed per call
    """client.generate_sync(ImageRequest("a fox", size="5x5", token=cfg.token.get_secret_value()))""",
    # 4. a bad setting next to the key in the environment
    """import os
os.environ["IMAGE_TIMEOUT"] = "soon"
try:
    ImageConfig.from_env()
finally:
    del os.environ["IMAGE_TIMEOUT"]""",
    # 5. a frame whose argument is the key
    """def use(token):
    raise ValueError("cannot use it")
use(cfg.token)""",
    # 6. the config, the client and the request themselves, printed
    """print(repr(cfg), cfg, repr(cfg.token), f"{cfg.token}", str(cfg.token), repr(client),
      repr(ImageRequest("x", token=cfg.token)), ImageRequest("x", token=cfg.token).token)""",
]


@pytest.mark.kernel
@pytest.mark.timeout(180)
def test_verbose_tracebacks_never_show_the_key(tmp_path, tmp_path_factory, emulator_thread):
    """A real kernel in `%xmode Verbose`: each failing cell's traceback lists the variables of
    every frame (the client's, the retry loop's, the one holding the headers); none shows the key,
    and the frames that hold it show its mask."""
    env = kernel_env(sys.executable, IMAGE_AUTH_TOKEN=TOKEN, IMAGE_API_TYPE="openai_images",
                     IMAGE_BASE_URL=emulator_thread.base_url_for("openai_images"),
                     IMAGE_CACHE_DIR=str(tmp_path / "cache"))
    with running_kernel(sys.executable, env=env, cwd=tmp_path, workdir=tmp_path_factory.mktemp("kernel")) as kernel:
        kernel.execute("%xmode Verbose", timeout=30)
        texts = []
        for code in VERBOSE_CELLS:
            reply, msgs = kernel.execute(code, timeout=60)
            texts.append((code.splitlines()[0], reply, "\n".join(message_text(m) for m in msgs)))
    for first, reply, text in texts:
        assert not leaks(strip_ansi(text)), f"{first}: {leaks(strip_ansi(text))}\n{strip_ansi(text)[-3000:]}"
    errors = [strip_ansi(t) for _, reply, t in texts[:5]]
    assert all(reply["status"] == "error" for _, reply, _ in texts[:5]), [r["status"] for _, r, _ in texts]
    # the tracebacks really are verbose, and went through the frames that hold the key
    assert "TransportBroke: the transport broke" in errors[0] and "_receive" in errors[0], errors[0][-2000:]
    assert "Authorization" in errors[0] and "Bearer sk-F...6e7f" in errors[0], errors[0][-4000:]
    assert "token=Secret('sk-F...6e7f')" in errors[4], errors[4]   # a frame holding the key shows its mask
    assert "AuthenticationError" in errors[1] or "401" in errors[1]
    assert "RequestError" in errors[2] and "size" in errors[2]
    assert "ConfigError" in errors[3] and "IMAGE_TIMEOUT" in errors[3]
    assert "sk-F...6e7f" in texts[5][2]


def _chunk(delta: dict) -> bytes:
    return ("data: " + json.dumps({"id": "x", "choices": [{"index": 0, "delta": delta}]}) + "\n\n").encode()


@pytest.mark.parametrize("field", ["content", "refusal"])
async def test_a_key_split_across_stream_chunks_is_not_joined_back(tmp_path, field):
    """Each stream event is scrubbed as it comes; the text joined from the chunks is scrubbed
    again (two clean halves make the whole key), before it is shown or cached."""
    async def sse(request):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_chunk({field: "your header was Bearer " + TOKEN[:20]}))
        await resp.write(_chunk({field: TOKEN[20:]}))
        if field == "content":
            await resp.write(_chunk({"images": [{"type": "image_url", "image_url": {
                "url": "data:image/png;base64," + _png_b64()}}]}))
        await resp.write(b"data: [DONE]\n\n")
        return resp
    async with TinyServer({"/v1/chat/completions": sse}) as srv:
        cfg = ImageConfig(api_type="openrouter_chat", base_url=srv.url + "/v1", token=TOKEN, max_attempts=1,
                          cache=True, cache_dir=str(tmp_path / "cache"))
        async with ImageClient(cfg) as client:
            resp = await client.generate(ImageRequest("a fox", stream=True))
    shown = " ".join(map(str, (resp.text, resp.error, repr(resp))))
    assert TOKEN not in shown and "sk-F...6e7f" in shown, shown
    assert resp.success is (field == "content")
    assert not tree_leaks(tmp_path / "cache") if (tmp_path / "cache").exists() else True


SPELLINGS = {
    "as is": lambda k: k,
    "upper case (a library changed it)": lambda k: k.upper(),
    "lower case (a host name)": lambda k: k.lower(),
    "cut by a library": lambda k: "b'" + "a" * 62 + k[:30] + "...'",
    "percent-encoded": lambda k: "".join(f"%{ord(c):02X}" for c in k),
    "double percent-encoded": lambda k: "".join(f"%25{ord(c):02X}" for c in k),
    "one character double-percent": lambda k: k[:28] + f"%25{ord(k[28]):02X}" + k[29:],
    "\\u escapes": lambda k: "".join(f"\\u{ord(c):04x}" for c in k),
    "\\x, %u, \\u{}, \\U, CSS for one character each": lambda k: (
        k[:5] + f"\\x{ord(k[5]):02x}" + k[6:15] + f"%u{ord(k[15]):04X}" + k[16:25] + "\\u{%x}" % ord(k[25])
        + k[26:35] + f"\\U{ord(k[35]):08X}" + k[36:40] + "\\%X " % ord(k[40]) + k[41:]),
    "HTML entities": lambda k: "".join(f"&#{ord(c)};" for c in k),
    "hex entities, escaped again": lambda k: "".join(f"&amp;#x{ord(c):x};" for c in k),
    "JSON with escaped slashes": lambda k: k.replace("-", "\\-"),
    "invisible characters inside": lambda k: k[:10] + "\u200b" + k[10:30] + "\u00ad" + k[30:],
}


@pytest.mark.parametrize("name", list(SPELLINGS))
def test_the_thorough_scrub_finds_the_key_however_it_is_spelled(name):
    """What is shown or stored goes through the thorough pass: no run of 12 characters of the
    key survives, whatever the spelling, the case, or a cut by a library."""
    from jupyter_imagegen.secret import Secret, SecretScrubber
    text = "the server said: " + SPELLINGS[name](TOKEN) + " (end)"
    out = SecretScrubber([Secret(TOKEN)]).thorough(text)
    plain = out.lower()
    assert not [p for p in PIECES if p.lower() in plain], out
    assert "sk-F...6e7f" in out and out.startswith("the server said: ")


def test_the_thorough_scrub_leaves_other_text_alone_and_is_bounded():
    from jupyter_imagegen.secret import THOROUGH_MAX, Secret, SecretScrubber
    sc = SecretScrubber([Secret(TOKEN)])
    for text in ("100% sure &amp; \\u0041 ok", "sk-other-key-0000", "a cat \ud800"):
        out = sc.thorough(text)
        assert out == text or (text.endswith("\ud800") and out == "a cat \ufffd"), out
    huge = "%" * (THOROUGH_MAX * 4)
    assert len(sc.thorough(huge)) == THOROUGH_MAX


def test_a_lone_surrogate_in_an_answer_is_shown_and_saved(tmp_path):
    """Valid JSON, no valid UTF-8: replaced by U+FFFD before it is shown, cached or saved."""
    from jupyter_imagegen import saving

    async def answer(request):
        return web.Response(text='{"created": 1, "data": [{"b64_json": "%s", "revised_prompt": "a cat \\ud800"}]}'
                            % _png_b64(), content_type="application/json")

    async def run():
        async with TinyServer({"/v1/images/generations": answer}) as srv:
            cfg = ImageConfig(api_type="openai_images", base_url=srv.url + "/v1", token=TOKEN, max_attempts=1,
                              cache=True, cache_dir=str(tmp_path / "cache"))
            async with ImageClient(cfg) as client:
                return await client.generate(ImageRequest("a cat"))
    resp = asyncio.run(run())
    assert resp.success and resp.revised_prompt == "a cat \ufffd"
    saved = saving.save_response(resp, tmp_path / "out")
    assert not saved.errors and json.loads(Path(saved.sidecars[0]).read_text())["revised_prompt"] == "a cat \ufffd"
