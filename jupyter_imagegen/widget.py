"""`ImageGenForm`: an ipywidgets form for trying prompts again and again.

    from jupyter_imagegen.widget import ImageGenForm
    form = ImageGenForm(prompt="a lighthouse at dusk", n=2)
    form                      # shows it; press Generate

    form.value                # the ImageResponse of the last finished run (None before)
    form.results              # every response that produced images, newest first
    form.request              # the ImageRequest the form would send now

or ``%imagegen_form [options] [prompt]`` after ``%load_ext jupyter_imagegen`` (see `magic`).

Generate never blocks the kernel: the request runs through the kernel runtime's pipeline on its
background loop (`runtime.submit`), its events and result are applied to the widgets on the
kernel's side (its event loop), and the button is disabled while it runs. Cancel cancels the
run, which cancels the HTTP call (the client closes the connection). "show progress" streams the request
(``stream`` + ``partial_images``): the partial images replace each other in the result area
while the model draws, and Cancel drops the stream at once. The live event log and the result
are drawn by the shared renderer (`display.GenerationView`) into an `ipywidgets.Output`; every
run that produced images is kept in a history (newest first) with its prompt and settings,
with "use as input" under each image and "reuse settings" for the run.

Configuration is read when Generate is pressed, as the magic does: ``ImageConfig.from_env()``
with the request cache on unless ``IMAGE_CACHE`` says otherwise, through the kernel's shared
client. ``config=`` (used as given) or ``client=`` replace that.

What stays in the notebook: the form itself is a live widget (after a kernel restart, or in a
saved notebook opened without its kernel, JupyterLab can only say "Error displaying widget:
model not found"). So every run that produced images also leaves an ordinary output in the cell
that displayed the form, below it: the same view the magic makes (gallery and summary, every
image a standard image/png or image/jpeg output). Those outputs are saved with the notebook,
survive a restart, and are read by nbconvert, GitHub and VS Code like any other; clearing the
cell's outputs or running the cell again removes them, as for any cell. Displayed in plain Python
(no kernel cell), the form publishes nothing of the kind.

Messages follow the fields: a wrong field is named in red next to the buttons (in the form's
words: "Size", not the magic's ``--size``) and the message goes away as soon as that field is
fixed; the upload button's count is the number of input images that will be sent, including
those added with "use as input".
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime
import html
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import ipywidgets as W

from . import events as ev
from .client import ImageClient
from .compare import acompare
from .config import API_TYPES, DEFAULT_MODELS, SUGGESTED_MODELS, ImageConfig, validate_api_type
from .display import DEFAULT_PREVIEW_MAX_SIDE, GenerationView, refusal_message
from .errors import ConfigError, InputImageError, RequestError
from .form_cards import history_card, history_title_html, input_card
from .form_fields import (API_LABELS, DEFAULT_PARTIALS, MAX_N, QUALITY_CHOICES, SIZE_SUGGESTIONS, FormRun,
                          FormSettings, InputSlot, join_size, parse_compare_field, split_size)
from .loop_thread import Job, caller_poster
from .model import EXT_BY_MIME, MAX_INPUT_BYTES, Artifact, ImageRequest, ImageResponse, InputImage
from . import render
from .render import esc, truncate
from .runtime import Outcome, runtime, save_dir_problem, show_outcome
from .theme import KIND_COLORS, STYLE_MUTED

log = logging.getLogger("jupyter_imagegen")

__all__ = ["ImageGenForm", "FormSettings", "FormRun", "InputSlot", "MAX_N", "API_LABELS", "SIZE_SUGGESTIONS",
           "QUALITY_CHOICES", "DEFAULT_PARTIALS", "split_size", "parse_compare_field"]

_DESC = {"description_width": "72px"}

#: the field a problem is about (its message clears when that field is fixed): the keys of
#: `ImageGenForm._field_widgets`, plus "request" (found by the provider's checks, no single field)
FIELDS = ("prompt", "api", "model", "size", "n", "quality", "save", "compare", "inputs", "progress")

#: the magic's words in a message -> the form's (the providers and compare speak the magic's)
_MAGIC_WORDS = [
    (re.compile(r"\(or --aspect to pick the nearest\)"),
     "(or write an aspect ratio such as 16:9 in Size: the nearest size is used)"),
    (re.compile(r"partial images need streaming: set stream=True \(--stream\)"),
     "partial images need streaming: tick show progress"),
    (re.compile(r"^--compare (?=')"), "Compare "),
    (re.compile(r" \(several prompts: separate them with a line '---' in the cell\)"), ""),
    (re.compile(r"\(--timeout, IMAGE_TIMEOUT\)"),
     "(request_options={'timeout': seconds} or IMAGE_TIMEOUT)"),
]
_OPTION_WORDS = {"aspect": "Size (an aspect ratio W:H)", "size": "Size", "quality": "Quality", "model": "Model",
                 "api": "API", "n": "n", "fresh": "ignore cache", "stream": "show progress",
                 "partials": "show progress", "compare": "Compare", "save": "Save to",
                 "image": "Add input images", "timeout": "request_options timeout"}


def form_words(text: str) -> str:
    """A message in the form's words: the magic's options (``--aspect``, ``--stream``...) become
    the form's fields, and API ids (``openai_images``) their labels."""
    for pattern, repl in _MAGIC_WORDS:
        text = pattern.sub(repl, text)
    text = re.sub(r"(?<![\w-])--?([a-z][\w-]*)", lambda m: _OPTION_WORDS.get(m.group(1), m.group(0)), text)
    return re.sub(r"\bwith (%s)\b" % "|".join(API_LABELS), lambda m: f"with {API_LABELS[m.group(1)]}", text)


def _field_of(message: str) -> str:
    """Which field a provider's refusal is about ("request" when it names none alone)."""
    low = message.lower()
    for prefix, name in (("size", "size"), ("aspect ratio", "size"), ("quality", "quality"), ("n=", "n"),
                         ("the prompt", "prompt"), ("compare", "compare")):
        if low.startswith(prefix):
            return name
    return "request"


# --------------------------------------------------------------------------------------------
# the cell that displays the form: where each run's ordinary outputs go
# --------------------------------------------------------------------------------------------
def _kernel_shell():
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return None
    shell = get_ipython()
    return shell if shell is not None and getattr(shell, "kernel", None) is not None else None


def cell_parent() -> Optional[Dict[str, Any]]:
    """The header of the execute_request (the notebook cell) being run now, or None (no kernel,
    or not inside a cell: a widget callback runs under a comm message).

    The display publisher's parent is what `display()` uses (ipykernel 6: an attribute; 7: a
    context variable behind the same property); the kernel's ``get_parent()`` is asked too."""
    shell = _kernel_shell()
    if shell is None:
        return None
    candidates = [getattr(getattr(shell, "display_pub", None), "parent_header", None)]
    get_parent = getattr(shell.kernel, "get_parent", None)
    if callable(get_parent):
        try:
            parent = get_parent("shell")
            candidates.append(parent.get("header") if isinstance(parent, dict) else None)
        except Exception:  # pragma: no cover - a kernel without channels
            pass
    for header in candidates:
        if isinstance(header, dict) and header.get("msg_type") == "execute_request" and header.get("msg_id"):
            return dict(header)
    return None


def publish_to_cell(parent: Dict[str, Any], outputs: Sequence[Tuple[Dict[str, Any], Dict[str, Any]]]) -> int:
    """Send `outputs` ((data, metadata) pairs) as ordinary display_data messages whose parent is
    the execute_request `parent`: the frontend appends them to that cell's outputs, even after the
    cell finished (JupyterLab keeps a cell's last execution listening until it runs again or is
    cleared). Returns how many were sent (0 outside a kernel)."""
    shell = _kernel_shell()
    pub = getattr(shell, "display_pub", None)
    session, socket = getattr(pub, "session", None), getattr(pub, "pub_socket", None)
    if session is None or socket is None:
        return 0
    flush = getattr(pub, "_flush_streams", None)
    if callable(flush):   # what the cell printed comes first
        try:
            flush()
        except Exception:  # pragma: no cover
            pass
    sent = 0
    for data, md in outputs:
        msg = session.msg("display_data", {"data": dict(data), "metadata": dict(md or {}), "transient": {}},
                          parent=parent)
        session.send(socket, msg, ident=getattr(pub, "topic", b"display_data"))
        sent += 1
    return sent


def _response_outputs(resp: ImageResponse, prompt: str, *, max_side: Optional[int], redact: Sequence[str],
                      extra_errors: Sequence[str] = ()) -> List[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """The magic's view of a response as cell outputs (`render.response_outputs`), under a line
    that says which prompt the form sent (the cell's source does not say it, as a magic's does)."""
    outputs = render.response_outputs(resp, max_side=max_side, redact=list(redact), extra_errors=list(extra_errors))
    (data, md), rest = outputs[0], outputs[1:]
    said = render.redactor(redact)(truncate(prompt, 200))
    head = f"<div style='{STYLE_MUTED}; font-size: 12px'>form run · {esc(said)}</div>"
    return [({**data, "text/html": head + data.get("text/html", ""),
              "text/plain": f"form run · {said}\n" + data.get("text/plain", "")}, md), *rest]

# --------------------------------------------------------------------------------------------
# the form
# --------------------------------------------------------------------------------------------
class ImageGenForm(W.VBox):
    """An image generation form (an ``ipywidgets.VBox``).

    Parameters: ``config`` (an ImageConfig, used as given: set ``cache=True`` there for the
    request cache) or ``client`` (an ImageClient) — by default the configuration is read from
    the environment at each Generate, with the cache on, like ``%%imagegen``. Initial fields:
    ``prompt``, ``api_type``, ``model``, ``size`` (WxH, ``auto``, or an aspect ratio W:H;
    ``aspect_ratio=`` is accepted too), ``n``, ``quality``, ``images`` (paths, bytes, PIL
    images, Artifacts, ImageResponses), ``save_dir``, ``fresh``, ``show_progress`` (stream and
    show ``partial_images`` partials, 0-3, default 2, in place). ``request_options`` are extra
    ImageRequest fields for every run (``timeout``, ``max_attempts``, ``headers``, ``base_url``...).
    ``max_upload_bytes`` bounds one input image; ``preview_max_side`` the live preview;
    ``thumbnail_size`` the history thumbnails; ``max_history`` how many runs are kept.

    Displayed in a notebook cell (``form`` as the cell's last line, ``display(form)``,
    ``%imagegen_form``), the form remembers that cell (`display_parent`; the latest display
    wins), and every run that produced images appends the magic's view of its images to that
    cell's outputs, below the form, as ordinary ``display_data`` (no widget): they are saved with
    the notebook and still there after a kernel restart, when the form itself can no longer be
    shown. Clearing the cell's outputs or running it again removes them, as for any output.
    Inside another widget, or with no kernel, nothing is added. The form's ``text/plain``
    (what is shown without a widget manager) says what it is and does not count runs.
    """

    def __init__(self, config: Optional[ImageConfig] = None, client: Any = None, *,
                 prompt: str = "", api_type: Optional[str] = None, model: Optional[str] = None,
                 size: Optional[str] = None, aspect_ratio: Optional[str] = None, n: int = 1,
                 quality: Optional[str] = None, images: Sequence[Any] = (), save_dir: Optional[str] = None,
                 fresh: bool = False, show_progress: bool = False, partial_images: int = DEFAULT_PARTIALS,
                 compare: str = "", request_options: Optional[Dict[str, Any]] = None,
                 max_upload_bytes: int = MAX_INPUT_BYTES,
                 preview_max_side: Optional[int] = DEFAULT_PREVIEW_MAX_SIDE, thumbnail_size: int = 160,
                 max_history: int = 50, **kwargs: Any):
        super().__init__(**kwargs)
        if config is not None and not isinstance(config, ImageConfig):
            raise TypeError(f"config must be an ImageConfig, not {type(config).__name__}")
        self._config = config
        self._client = client
        self._own_client = None
        self.request_options: Dict[str, Any] = dict(request_options or {})
        self.max_upload_bytes = int(max_upload_bytes)
        self.thumbnail_size = int(thumbnail_size)
        self.max_history = int(max_history)

        #: the run in progress or the last one, as a future on the kernel's loop: done once its
        #: outcome is shown in the form (its result: the response; cancelled when cancelled)
        self.task: Optional[asyncio.Future] = None
        #: the same run on the runtime's background loop (a `loop_thread.Job`)
        self.job: Optional[Job] = None
        self.value: Optional[ImageResponse] = None
        self.history: List[FormRun] = []
        self.inputs: List[InputSlot] = []
        #: the fields the validation message is about now (it is re-checked when one changes)
        self._shown_fields: Set[str] = set()
        self._shown_deep = False            # the message came from the provider's checks too
        self._syncing_upload = False        # the form itself is setting upload.value
        #: the header of the execute_request of the cell that displayed the form last (None:
        #: not displayed in a kernel cell); each run's ordinary outputs go there
        self.display_parent: Optional[Dict[str, Any]] = None

        base = self._base_config()
        start_api = validate_api_type(api_type, "api_type") if api_type else base.api_type
        if size and aspect_ratio:
            raise RequestError("give either a size or an aspect ratio, not both")
        if quality and quality not in QUALITY_CHOICES:
            raise RequestError(f"quality={quality!r}: use one of {', '.join(QUALITY_CHOICES)}")
        try:
            n = int(n)
        except (TypeError, ValueError):
            raise RequestError(f"n={n!r} must be a whole number of images") from None
        if isinstance(partial_images, bool) or not isinstance(partial_images, int) or not 0 <= partial_images <= 3:
            raise RequestError(f"partial_images={partial_images!r}: ask for 0 to 3 partial images")
        #: partial images asked for when "show progress" is on
        self.partial_images = partial_images

        # -- fields ---------------------------------------------------------------------------
        full = W.Layout(width="auto")   # the column's width (100% plus the widget's margin would stick out)
        self.prompt_text = W.Textarea(value=prompt or "", placeholder="What should the image show?",
                                      description="Prompt", rows=3, layout=full, style=_DESC)
        self.api_select = W.Dropdown(options=[(API_LABELS[a], a) for a in API_TYPES], value=start_api,
                                     description="API", style=_DESC, layout=W.Layout(width="260px", max_width="100%"))
        self.model_input = W.Combobox(value=model or "", options=list(SUGGESTED_MODELS[start_api]),
                                      ensure_option=False, description="Model", style=_DESC,
                                      layout=W.Layout(width="420px", max_width="100%"))
        self.size_input = W.Combobox(value=join_size(size, aspect_ratio), options=list(SIZE_SUGGESTIONS[start_api]),
                                     ensure_option=False, description="Size", placeholder="default",
                                     style=_DESC, layout=W.Layout(width="260px", max_width="100%"))
        self.n_input = W.IntText(value=int(n), description="n", style={"description_width": "24px"},
                                 layout=W.Layout(width="110px", max_width="100%"), continuous_update=True)
        self.quality_select = W.Dropdown(options=[("default", "")] + [(q, q) for q in QUALITY_CHOICES],
                                         value=quality or "", description="Quality", style=_DESC,
                                         layout=W.Layout(width="220px", max_width="100%"))
        self.save_input = W.Text(value=save_dir or "", placeholder="folder to save images in (empty: not saved)",
                                 description="Save to", style=_DESC,
                                 layout=W.Layout(width="520px", max_width="100%"))
        self.fresh_check = W.Checkbox(value=bool(fresh), description="ignore cache (new sample)", indent=False,
                                      layout=W.Layout(width="auto"))
        self.progress_check = W.Checkbox(value=bool(show_progress), description="show progress (partial images)",
                                         indent=False, layout=W.Layout(width="auto"),
                                         tooltip="stream the request: the image appears coarse and sharpens in "
                                                 "place while the model draws; Cancel stops it early")
        self.compare_input = W.Text(value=compare or "", description="Compare",
                                    placeholder="e.g. model=gpt-image-1,gpt-image-1-mini size=1024x1024,1536x1024",
                                    tooltip="run every combination into one labelled grid (keys: model, size, "
                                            "aspect, api, quality; several specs separated by spaces or ';')",
                                    style=_DESC, layout=W.Layout(width="auto"))
        #: the grid of the last compare run (None until one ran)
        self.compare_result = None
        self.upload = W.FileUpload(accept="image/*", multiple=True, description="Add input images",
                                   layout=W.Layout(width="auto"))
        self.inputs_box = W.HBox([], layout=W.Layout(flex_flow="row wrap", max_width="100%"))
        self.generate_button = W.Button(description="Generate", button_style="primary", icon="paint-brush",
                                        tooltip="send the request (the kernel stays free)")
        self.cancel_button = W.Button(description="Cancel", icon="stop", disabled=True,
                                      tooltip="cancel the request in flight")
        self.message = W.HTML(value="", layout=W.Layout(max_width="100%"))
        self.output = W.Output(layout=W.Layout(width="auto"))
        self.history_title = W.HTML(value="")
        self.history_box = W.VBox([], layout=W.Layout(width="auto"))
        self.preview_max_side = preview_max_side
        #: the renderer of the current (or last) run; a new one per run, drawing into `output`
        self.view = GenerationView(output=self.output, preview_max_side=preview_max_side, title="imagegen")

        for cls, w in (("imagegen-prompt", self.prompt_text), ("imagegen-generate", self.generate_button),
                       ("imagegen-cancel", self.cancel_button), ("imagegen-output", self.output),
                       ("imagegen-history", self.history_box), ("imagegen-message", self.message),
                       ("imagegen-upload", self.upload), ("imagegen-progress", self.progress_check)):
            w.add_class(cls)
        self.add_class("imagegen-form")

        self._update_model_placeholder()
        self.api_select.observe(self._on_api_change, names="value")
        self.upload.observe(self._on_upload, names="value")
        for name, w in self._field_widgets().items():
            if name != "inputs":
                w.observe(lambda _c, name=name: self._recheck(name), names="value")
        self.generate_button.on_click(lambda _b: self.generate())
        self.cancel_button.on_click(lambda _b: self.cancel())

        for img in images or ():
            self.add_input(img)

        self.children = [
            self.prompt_text,
            W.HBox([self.api_select, self.model_input], layout=W.Layout(flex_flow="row wrap")),
            W.HBox([self.size_input, self.n_input, self.quality_select], layout=W.Layout(flex_flow="row wrap")),
            W.HBox([self.save_input, self.fresh_check, self.progress_check],
                   layout=W.Layout(flex_flow="row wrap", align_items="center")),
            self.compare_input,
            W.HBox([self.upload, self.inputs_box], layout=W.Layout(flex_flow="row wrap", align_items="flex-start")),
            W.HBox([self.generate_button, self.cancel_button, self.message],
                   layout=W.Layout(flex_flow="row wrap", align_items="center")),
            self.output,
            self.history_title,
            self.history_box,
        ]
        self._refresh_history_title()

    # -- configuration ------------------------------------------------------------------------
    def _base_config(self) -> ImageConfig:
        """The configuration for defaults shown in the form (never raises)."""
        if self._client is not None:
            return self._client.config
        if self._config is not None:
            return self._config
        try:
            return ImageConfig.from_env()
        except ConfigError:
            return ImageConfig()

    def _client_for_run(self):
        """The client for one run. Raises ConfigError (a bad IMAGE_* variable)."""
        if self._client is not None:
            return self._client
        if self._config is not None:
            if self._own_client is None:
                self._own_client = ImageClient(self._config)
            return self._own_client
        return runtime.client()  # like the magic: IMAGE_*, cache on unless IMAGE_CACHE says otherwise

    def _default_model(self, api: str) -> str:
        cfg = self._base_config()
        return cfg.model if (api == cfg.api_type and cfg.model) else DEFAULT_MODELS[api]

    def _update_model_placeholder(self) -> None:
        self.model_input.placeholder = f"default: {self._default_model(self.api_select.value)}"

    def _on_api_change(self, change) -> None:
        old, new = change["old"], change["new"]
        current = self.model_input.value.strip()
        self.model_input.options = list(SUGGESTED_MODELS[new])
        if current and current in SUGGESTED_MODELS.get(old, ()) and current not in SUGGESTED_MODELS[new]:
            self.model_input.value = ""  # another API's model would only be refused
        self.size_input.options = list(SIZE_SUGGESTIONS[new])
        self._update_model_placeholder()

    # -- input images -------------------------------------------------------------------------
    @property
    def input_images(self) -> List[InputImage]:
        """The valid input images, in order."""
        return [s.image for s in self.inputs if s.image is not None]

    def add_input(self, image: Any, name: Optional[str] = None) -> InputSlot:
        """Add an input image: a path, bytes, a data URL, a PIL image, an Artifact, an
        ImageResponse (its first image) or an InputImage. A bad one is kept as a refused card
        (with the reason) so Generate says why it will not send; remove it to go on."""
        if isinstance(image, ImageResponse):
            if not image.artifacts:
                slot = InputSlot(name or "response", None, "that response has no images")
                return self._add_slot(slot)
            image = image.artifacts[0]
        if name is None:
            if isinstance(image, InputImage):
                name = image.name
            elif isinstance(image, Artifact):
                name = f"result-{image.index + 1}{image.extension}"
            elif isinstance(image, (str, os.PathLike)) and not str(image).startswith("data:"):
                name = Path(image).name
            else:
                name = f"image-{len(self.inputs) + 1}"
        try:
            if isinstance(image, (bytes, bytearray, memoryview)) and len(image) > self.max_upload_bytes:
                raise RequestError(f"{len(image) / 1e6:.1f} MB is over the {self.max_upload_bytes / 1e6:.3g} MB "
                                   "limit — downscale or compress it first")
            img = InputImage.from_any(image, max_bytes=self.max_upload_bytes, label=name)
            stem = Path(name).stem or "image"
            img = dataclasses.replace(img, name=stem + EXT_BY_MIME.get(img.mime_type, ".png"))
            slot = InputSlot(name, img)
        except InputImageError as e:
            slot = InputSlot(name, None, e.reason)
        except RequestError as e:
            slot = InputSlot(name, None, str(e))
        return self._add_slot(slot)

    def _add_slot(self, slot: InputSlot) -> InputSlot:
        input_card(slot, on_remove=self.remove_input)
        self.inputs.append(slot)
        self._sync_inputs()
        if slot.error:
            self._say(f"input image {slot.name}: {slot.error}", fields={"inputs"})
        return slot

    def remove_input(self, slot: Union[InputSlot, int]) -> None:
        """Remove an input image (its slot or its position)."""
        if isinstance(slot, int):
            slot = self.inputs[slot]
        if slot in self.inputs:
            self.inputs.remove(slot)
        self._sync_inputs()

    def clear_inputs(self) -> None:
        self.inputs = []
        self._sync_inputs()

    def _sync_inputs(self) -> None:
        self.inputs_box.children = tuple(s.widget for s in self.inputs)
        self._sync_upload_count()
        self._recheck("inputs")

    def _sync_upload_count(self) -> None:
        """The upload button shows "Add input images (N)" with N its value's length (the frontend
        appends it): its value mirrors the input images that will be sent (name, type, size; no
        content: the images are in `inputs`), so N counts uploads and "use as input" alike."""
        now = datetime.datetime.now(datetime.timezone.utc)
        value = tuple({"name": img.name, "type": img.mime_type, "size": len(img.data), "content": memoryview(b""),
                       "last_modified": now} for img in self.input_images)
        if len(value) == len(self.upload.value) and all(a["name"] == b.get("name") and a["size"] == b.get("size")
                                                        for a, b in zip(value, self.upload.value)):
            return
        self._syncing_upload = True
        try:
            self.upload.value = value
        finally:
            self._syncing_upload = False

    def _on_upload(self, change) -> None:
        files = change["new"]
        if self._syncing_upload or not files:
            return
        for f in files:
            name = str(f.get("name") or "upload")
            content = f.get("content")
            try:
                data = bytes(content) if content is not None else b""
            except Exception:  # pragma: no cover - the frontend always sends bytes
                data = b""
            if not data:
                self._add_slot(InputSlot(name, None, "the file is empty or could not be read"))
                continue
            self.add_input(data, name=name)
        # forget the files themselves (the images live in self.inputs; the same file can be chosen
        # again): the value goes back to the list of what will be sent
        self._sync_upload_count_now()

    def _sync_upload_count_now(self) -> None:
        self._syncing_upload = True
        try:
            self.upload.value = ()
        finally:
            self._syncing_upload = False
        self._sync_upload_count()

    # -- fields <-> settings / request --------------------------------------------------------
    @property
    def settings(self) -> FormSettings:
        """The fields now, as a FormSettings (valid input images only)."""
        n = self.n_input.value
        return FormSettings(prompt=self.prompt_text.value, api_type=self.api_select.value,
                            model=self.model_input.value.strip(), size=self.size_input.value.strip(),
                            n=int(n) if n is not None else 0, quality=self.quality_select.value or "",
                            save_dir=self.save_input.value.strip(), fresh=bool(self.fresh_check.value),
                            images=tuple(self.input_images), progress=bool(self.progress_check.value))

    def apply_settings(self, settings: FormSettings) -> None:
        """Put `settings` into the fields (what "reuse settings" does)."""
        self.api_select.value = settings.api_type
        self.model_input.value = settings.model
        self.prompt_text.value = settings.prompt
        self.size_input.value = settings.size
        self.n_input.value = settings.n
        self.quality_select.value = settings.quality if settings.quality in QUALITY_CHOICES else ""
        self.save_input.value = settings.save_dir
        self.fresh_check.value = settings.fresh
        self.progress_check.value = settings.progress
        self.clear_inputs()
        for img in settings.images:
            self.add_input(img)

    def problems(self) -> List[str]:
        """What is wrong with the fields (empty when the form can send)."""
        return [text for _field, text in self.field_problems()]

    def field_problems(self) -> List[Tuple[str, str]]:
        """What is wrong with the fields, as (field, message) pairs; the field is one of `FIELDS`."""
        out: List[Tuple[str, str]] = []
        if not self.prompt_text.value.strip():
            out.append(("prompt", "the prompt is empty: write what the image should show"))
        n = self.n_input.value
        if n is None or not 1 <= int(n) <= MAX_N:
            out.append(("n", f"n={n}: ask for 1 to {MAX_N} images"))
        try:
            split_size(self.size_input.value)
        except RequestError as e:
            out.append(("size", str(e)))
        for s in self.inputs:
            if s.error:
                out.append(("inputs", f"input image {s.name}: {s.error} — remove it to go on"))
        return out

    def check(self, deep: bool = True) -> List[Tuple[str, str]]:
        """Everything Generate checks before sending, as (field, message) pairs in the form's
        words: the fields, then (`deep`, when the fields are fine) the provider's checks of the
        request (sizes, qualities, n per model...), the save folder and the compare field."""
        out = self.field_problems()
        if out or not deep:
            return out
        settings = self.settings
        try:
            self._client_for_run().resolve(self.build_request(settings))
        except ConfigError as e:
            return [("request", str(e))]
        except RequestError as e:
            return [(_field_of(str(e)), form_words(str(e)))]
        if settings.save_dir:  # checked now (created when the images are there), not after paying for them
            problem = save_dir_problem(settings.save_dir)
            if problem:
                out.append(("save", f"save folder {settings.save_dir}: {problem}"))
        try:
            parse_compare_field(self.compare_input.value)
        except ValueError as e:
            out.append(("compare", form_words(str(e))))
        return out

    def build_request(self, settings: Optional[FormSettings] = None) -> ImageRequest:
        """The ImageRequest for `settings` (default: the fields now). Raises RequestError when a
        field is wrong (the message lists every problem)."""
        if settings is None:
            problems = self.problems()
            if problems:
                raise RequestError("; ".join(problems))
            settings = self.settings
        size, aspect = split_size(settings.size)
        opts = dict(self.request_options)
        opts["headers"] = dict(opts.get("headers") or {})
        if settings.progress:
            opts["stream"], opts["partial_images"] = True, self.partial_images
        return ImageRequest(prompt=settings.prompt.strip(), model=settings.model or None,
                            api_type=settings.api_type, n=settings.n, size=size, aspect_ratio=aspect,
                            quality=settings.quality or None, images=list(settings.images),
                            fresh=settings.fresh, **opts)

    @property
    def request(self) -> ImageRequest:
        """The ImageRequest the form would send now (RequestError when a field is wrong)."""
        return self.build_request()

    # -- results ------------------------------------------------------------------------------
    @property
    def results(self) -> List[ImageResponse]:
        """The responses that produced images, newest first (the history)."""
        return [h.response for h in self.history]

    @property
    def running(self) -> bool:
        """True from Generate until the run's outcome is shown in the form."""
        return self.task is not None and not self.task.done()

    async def wait(self, timeout: Optional[float] = None) -> Optional[ImageResponse]:
        """Wait until the run in progress (if any) is shown in the form; returns `value`. A
        cancelled run returns too; so does `timeout` (seconds) running out."""
        task = self.task
        if task is not None and not task.done():
            await asyncio.wait([task], timeout=timeout)
        return self.value

    # -- messages -----------------------------------------------------------------------------
    def _field_widgets(self) -> Dict[str, W.Widget]:
        return {"prompt": self.prompt_text, "api": self.api_select, "model": self.model_input,
                "size": self.size_input, "n": self.n_input, "quality": self.quality_select,
                "save": self.save_input, "compare": self.compare_input, "inputs": self.upload,
                "progress": self.progress_check}

    def _say(self, text: Union[None, str, Sequence[str]], kind: str = "error", *,
             fields: Optional[Set[str]] = None, deep: bool = False) -> None:
        """Show the inline message (None clears it). `fields`: the fields it is about (marked,
        and the message is checked again whenever a field changes: it goes away once they are
        fixed); `deep`: it came from the provider's checks (`check()` re-runs those too)."""
        self._shown_fields = set(fields or ())
        self._shown_deep = deep
        widgets = self._field_widgets()
        for name, w in widgets.items():
            if name in self._shown_fields:
                w.add_class("imagegen-invalid")
            else:
                w.remove_class("imagegen-invalid")
        if not text:
            self.message.value = ""
            return
        items = [text] if isinstance(text, str) else list(text)
        color = {"error": KIND_COLORS["failed"], "info": "inherit"}.get(kind, "inherit")
        icon = "✖ " if kind == "error" else ""
        body = "<br>".join(f"{icon}{esc(t)}" for t in items)
        # the wrong fields get an outline in the message's colour (gone with the message)
        mark = (f"<style>.imagegen-form .imagegen-invalid :is(input, textarea, select, button) "
                f"{{border-color: {color} !important; box-shadow: 0 0 0 1px {color} !important}}</style>"
                if self._shown_fields else "")
        self.message.value = (f'{mark}<div class="imagegen-form-message" data-kind="{kind}" '
                              f'style="color: {color}; margin-left: 8px; line-height: 1.4; '
                              f'overflow-wrap: anywhere">{body}</div>')

    def _show_problems(self, problems: List[Tuple[str, str]], deep: bool) -> None:
        self._say([text for _f, text in problems], fields={f for f, _t in problems}, deep=deep)

    def _recheck(self, changed: str) -> None:
        """A field changed: check the problems the message names again; what is fixed goes away."""
        shown = self._shown_fields
        if not shown:
            return
        if changed not in shown and not self._shown_deep and shown <= set(FIELDS):
            return   # another field: the message stays as it is
        try:
            problems = self.check(deep=self._shown_deep)
        except Exception:  # pragma: no cover - checking must never break typing
            log.debug("checking the form's fields failed", exc_info=True)
            return
        still = [(f, t) for f, t in problems if f in shown]
        if not still:
            self._say(None)
        else:
            self._show_problems(still, self._shown_deep)

    @property
    def message_text(self) -> str:
        """The inline message as plain text ('' when there is none)."""
        value = re.sub(r"<style>.*?</style>", "", self.message.value, flags=re.S)
        return html.unescape(re.sub(r"<br>", "\n", re.sub(r"<(?!br>)[^>]+>", "", value))).strip()

    # -- generate / cancel --------------------------------------------------------------------
    def _set_running(self, running: bool) -> None:
        self.generate_button.disabled = running
        self.generate_button.description = "Generating…" if running else "Generate"
        self.cancel_button.disabled = not running

    def generate(self) -> "Optional[asyncio.Future[Any]]":
        """What the Generate button does. Returns the run's future (`task`), or None when nothing
        was sent (a field is wrong: the inline message says which; or a run is in progress)."""
        if self.running:
            self._say("a request is already running: wait for it, or press Cancel")
            return None
        problems = self.field_problems()
        if problems:
            self._show_problems(problems, deep=False)
            return None
        problems = self.check()
        if problems:
            self._show_problems(problems, deep=True)
            return None
        settings = self.settings
        try:
            request = self.build_request(settings)
            client = self._client_for_run()
            compare_dims = parse_compare_field(self.compare_input.value)
        except (RequestError, ConfigError, ValueError) as e:  # pragma: no cover - check() said it is fine
            self._say(form_words(str(e)))
            return None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._say("Generate needs a running event loop (a Jupyter kernel, or an async test); "
                      "in plain Python use ImageClient.generate_sync(form.request)")
            return None
        self._say(None)
        # one view per run (it replaces the previous run's log and result in the Output)
        view = GenerationView(output=self.output, preview_max_side=self.preview_max_side, title="imagegen",
                              redact=[t for t in (getattr(client.config, "token", None), request.token) if t])
        self.view = view
        view.start(settings.prompt)
        self._set_running(True)
        done: "asyncio.Future[Any]" = loop.create_future()
        self.task = done
        post = caller_poster()   # widget updates happen on the kernel's side, in order
        if compare_dims:
            view.reset()  # the grid replaces the log of a single run
            plural = {"model": "models", "size": "sizes", "aspect": "aspects", "api": "apis", "quality": "qualities"}
            job = runtime.submit(acompare(base=request, client=client, live=True, output=self.output,
                                          save=settings.save_dir or None, redact=view.redact, ui=post,
                                          **{plural[k]: v for k, v in compare_dims.items()}))
            job.add_done_callback(lambda j: post(self._finish_compare, j, view, done))
        else:
            job = runtime.submit(runtime.execute(request, client=client, save=settings.save_dir or None,
                                                 source="form", redact=view.redact, preview=view.preview_max_side,
                                                 on_event=lambda e: post(self._on_event, view, e)))
            job.add_done_callback(lambda j: post(self._finish, j, view, request, settings, done))
        self.job = job
        return done

    def cancel(self) -> bool:
        """What the Cancel button does: cancel the run in progress (its HTTP call is closed).
        Returns True when there was one to cancel."""
        job = self.job
        if job is None or not self.running:
            return False
        job.cancel()
        return True

    def _cancel_text(self, job: Job) -> Optional[str]:
        """What the log says when the Cancel button stopped `job` (None when something else did)."""
        if not job.cancel_requested:
            return None
        return (f"cancelled with the Cancel button after {time.monotonic() - job.started:.1f} s: "
                "the HTTP call was closed; nothing more will be sent")

    def _on_event(self, view: GenerationView, event) -> None:
        if event.type == ev.GENERATION_FAILED and event.data.get("cancelled") and self.job is not None:
            text = self._cancel_text(self.job)
            if text:
                view.log.cancel(text)
        view.on_event(event)

    def _outcome(self, job: Job, view: GenerationView) -> Any:
        """The run's result, or None after showing why there is none (cancelled, refused, a bug)."""
        if job.cancelled():
            view.cancelled(self._cancel_text(job))
            return None
        try:
            return job.result()
        except (RequestError, ConfigError) as e:
            msg = form_words(refusal_message(e))
            view.show_error(msg, title="Nothing was sent")
            self._say(msg)
        except Exception as e:  # a bug must still leave the form usable
            log.error("image generation from the form failed", exc_info=e)
            view.show_error(f"{type(e).__name__}: {e}", title="Unexpected error")
        return None

    def _finish(self, job: Job, view: GenerationView, request: ImageRequest, settings: FormSettings,
                done: "asyncio.Future[Any]") -> None:
        """A single run ended (runs on the kernel's side): show it, keep it in the history."""
        outcome: Optional[Outcome] = None
        try:
            outcome = self._outcome(job, view)
            if outcome is not None:
                resp = outcome.response
                self.value = resp
                show_outcome(view, _in_form_words(outcome), settings.save_dir)
                if resp.artifacts:
                    self._add_history(FormRun(resp, settings, request, time.time()))
                    self._publish(_response_outputs(resp, request.prompt, max_side=self.preview_max_side,
                                                    redact=view.redact, extra_errors=outcome.save_errors))
        except Exception as e:  # pragma: no cover - display problems must not lose the response
            log.exception("showing the response failed")
            view.show_error(f"{type(e).__name__}: {e}", title="Could not show the result")
        finally:
            self._set_running(False)
            _settle(done, job, outcome.response if outcome is not None else None)

    def _finish_compare(self, job: Job, view: GenerationView, done: "asyncio.Future[Any]") -> None:
        """A "compare with" run ended (runs on the kernel's side)."""
        result = None
        try:
            result = self._outcome(job, view)
            if result is not None:
                self.compare_result = result
                if result.failed:
                    self._say(f"{result.failed} of {len(result.cells)} cells failed (shown in place)", kind="info")
                if result.ok:
                    outputs = getattr(result, "outputs", None)
                    self._publish(outputs() if callable(outputs) else [(result._repr_mimebundle_(), {})])
        finally:
            self._set_running(False)
            _settle(done, job, result)

    # -- the cell's ordinary outputs ----------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs):
        """The widget's display bundle; displaying it in a kernel cell makes that cell the one
        each run's ordinary outputs go to (`display_parent`). Its text/plain (what a notebook
        shows without the widget) does not count runs: it would be stale once saved."""
        parent = cell_parent()
        if parent is not None:
            self.display_parent = parent
        data = super()._repr_mimebundle_(**kwargs)
        if data:
            data["text/plain"] = FALLBACK_TEXT
        return data

    def _publish(self, outputs: Sequence[Tuple[Dict[str, Any], Dict[str, Any]]]) -> int:
        """Append `outputs` to the cell that displayed the form (see the module docstring)."""
        if self.display_parent is None:
            return 0
        try:
            return publish_to_cell(self.display_parent, outputs)
        except Exception:  # the form's own view has the result: never fail the run for this
            log.warning("could not add the images to the notebook cell", exc_info=True)
            return 0

    # -- history ------------------------------------------------------------------------------
    def _refresh_history_title(self) -> None:
        self.history_title.value = history_title_html(len(self.history))

    def _add_history(self, entry: FormRun) -> None:
        history_card(entry, self.thumbnail_size, on_use=self._use_as_input, on_reuse=self.reuse)
        self.history.insert(0, entry)
        del self.history[self.max_history:]
        self.history_box.children = tuple(h.widget for h in self.history)
        self._refresh_history_title()

    def _use_as_input(self, art: Artifact, k: int, entry: FormRun) -> None:
        slot = self.add_input(art, name=f"result-{k + 1}{art.extension}")
        if slot.image is not None:
            self._say(f"added image {k + 1} of “{truncate(entry.prompt, 40)}” as an input image", kind="info")

    def reuse(self, entry: Union[FormRun, int]) -> None:
        """Restore a run's fields (its entry, or its position in the history: 0 = newest)."""
        if isinstance(entry, int):
            entry = self.history[entry]
        self.apply_settings(entry.settings)
        self._say("settings restored from the history", kind="info")

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Cancel a run in progress, close the widgets, and the form's own client (if any).
        (ipywidgets also calls this when the form is garbage collected.)"""
        try:
            self.cancel()
            own, self._own_client = getattr(self, "_own_client", None), None
            if own is not None:
                runtime.submit(own.close())
            for w in self._all_widgets():
                w.close()
        except Exception:  # pragma: no cover - closing must never raise (it runs from __del__ too)
            log.debug("closing the form failed", exc_info=True)
        super().close()

    def _all_widgets(self) -> List[W.Widget]:
        out: List[W.Widget] = []

        def walk(w):
            for c in getattr(w, "children", ()) or ():
                walk(c)
                out.append(c)
        walk(self)
        return out

    def __repr__(self) -> str:
        state = "running" if self.running else f"{len(self.history)} result{'s' if len(self.history) != 1 else ''}"
        return f"<ImageGenForm {self.api_select.value} · {state}>"


#: the form's text/plain: what a notebook shows of it with no widget manager (GitHub, nbconvert)
FALLBACK_TEXT = ("ImageGenForm (an interactive form: it needs a running kernel; run this cell to use it). "
                 "Each run's images follow as outputs of this cell.")


def _in_form_words(outcome: Outcome) -> Outcome:
    """`outcome` for the form's view: the response's suggestions in the form's words (a copy when
    they change; the response kept in `value` and the history is the client's)."""
    resp = outcome.response
    words = [form_words(s) for s in resp.suggestions]
    if words == list(resp.suggestions):
        return outcome
    return dataclasses.replace(outcome, response=dataclasses.replace(resp, suggestions=words))


def _settle(done: "asyncio.Future[Any]", job: Job, result: Any) -> None:
    """The form's future: cancelled when the run was, else the run's result."""
    if done.done():
        return
    if job.cancelled():
        done.cancel()
    else:
        done.set_result(result)
