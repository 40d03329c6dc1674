"""The package's public API, pinned (as httpx's test_exported_members does).

A name added to or removed from `jupyter_imagegen.__all__` must be added to or removed from
PUBLIC_API here in the same change: the API is then a decision, not an accident.
"""
from __future__ import annotations

import pytest

import jupyter_imagegen

PUBLIC_API = sorted([
    # client, configuration, data
    "ImageClient", "ImageConfig", "ImageRequest", "ImageResponse", "Artifact", "InputImage", "Usage", "Event",
    "mask_token",
    # errors (jupyter_imagegen.errors)
    "ImageGenError", "ConfigError", "MissingTokenError", "RequestError", "ImageAPIError", "ImageRetryableError",
    "BadRequestError", "AuthenticationError", "PaymentRequiredError", "PermissionDeniedError", "NotFoundError",
    "UnprocessableEntityError", "RateLimitError", "InternalServerError", "APIConnectionError", "APITimeoutError",
    "NoImageError", "ContentPolicyError", "GenerationCancelled", "api_error_for", "InputImageError",
    # saving, comparing, history
    "load", "save_response", "compare", "acompare", "CompareResult", "history",
    # IPython extension
    "load_ipython_extension", "unload_ipython_extension",
])


def test_all_is_exactly_the_public_api():
    assert sorted(jupyter_imagegen.__all__) == PUBLIC_API
    assert len(set(jupyter_imagegen.__all__)) == len(jupyter_imagegen.__all__), "a name is listed twice"


@pytest.mark.parametrize("name", PUBLIC_API)
def test_every_public_name_imports_from_the_package(name):
    namespace: dict = {}
    exec(f"from jupyter_imagegen import {name}", namespace)
    assert namespace[name] is not None
    assert getattr(jupyter_imagegen, name) is namespace[name]


def test_the_errors_are_the_errors_modules():
    from jupyter_imagegen import errors
    for name in PUBLIC_API:
        if name in errors.__all__:
            assert getattr(jupyter_imagegen, name) is getattr(errors, name)
