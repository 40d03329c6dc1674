"""jupyter_imagegen: generate images from prompts inside Jupyter."""
from __future__ import annotations

from .config import ImageConfig, mask_token
from .errors import (APIConnectionError, APITimeoutError, AuthenticationError, BadRequestError, ConfigError,
                     ContentPolicyError, GenerationCancelled, ImageAPIError, ImageGenError, ImageRetryableError,
                     InputImageError, InternalServerError, MissingTokenError, NoImageError, NotFoundError, PaymentRequiredError,
                     PermissionDeniedError, RateLimitError, RequestError, UnprocessableEntityError, api_error_for)
from .events import Event
from .model import Artifact, ImageRequest, ImageResponse, InputImage, Usage

__version__ = "0.1.0"

__all__ = [
    "Artifact", "ConfigError", "Event", "ImageAPIError", "ImageClient", "ImageConfig",
    "ImageGenError", "ImageRequest", "ImageResponse", "ImageRetryableError", "InputImage",
    "RequestError", "Usage", "mask_token", "load_ipython_extension", "unload_ipython_extension",
    "load", "save_response", "compare", "acompare", "CompareResult", "history",
    # the typed errors (jupyter_imagegen.errors)
    "MissingTokenError", "BadRequestError", "AuthenticationError", "PaymentRequiredError",
    "PermissionDeniedError", "NotFoundError", "UnprocessableEntityError", "RateLimitError",
    "InternalServerError", "APIConnectionError", "APITimeoutError", "NoImageError", "ContentPolicyError",
    "GenerationCancelled", "api_error_for", "InputImageError",
]


def __getattr__(name):  # lazy: importing the package must not import aiohttp/IPython
    if name == "ImageClient":
        from .client import ImageClient
        return ImageClient
    if name == "load":
        from .loading import load
        return load
    if name == "save_response":
        from .saving import save_response
        return save_response
    if name in ("compare", "acompare", "CompareResult"):
        import importlib
        mod = importlib.import_module(".compare", __name__)  # callable: compare(...) runs a comparison
        return mod if name == "compare" else getattr(mod, name)
    if name == "history":  # the module is the kernel's history (indexable, displayable)
        from . import runtime  # noqa: F401  - what `history[N].rerun()` sends through
        import importlib
        return importlib.import_module(".history", __name__)
    raise AttributeError(name)


def load_ipython_extension(ipython):
    """`%load_ext jupyter_imagegen`: registers %%imagegen / %imagegen, %imagegen_form and
    %imagegen_history."""
    from .magic import load_ipython_extension as _load
    _load(ipython)


def unload_ipython_extension(ipython):
    from .magic import unload_ipython_extension as _unload
    _unload(ipython)
