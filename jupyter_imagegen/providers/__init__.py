"""One module per wire format. `get_provider(api_type)` returns the provider instance."""
from __future__ import annotations

from ..config import validate_api_type
from .base import Provider
from .openai_images import OpenAIImagesProvider
from .openai_responses import OpenAIResponsesProvider
from .openrouter_chat import OpenRouterChatProvider

PROVIDERS = {p.api_type: p for p in (OpenRouterChatProvider(), OpenAIImagesProvider(), OpenAIResponsesProvider())}


def get_provider(api_type: str) -> Provider:
    return PROVIDERS[validate_api_type(api_type)]


__all__ = ["Provider", "get_provider", "PROVIDERS"]
