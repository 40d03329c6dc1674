"""ImageConfig: environment variables, overrides and the errors for bad values."""
import pytest

from jupyter_imagegen import ImageConfig, mask_token
from jupyter_imagegen.config import DEFAULT_BASE_URLS, DEFAULT_MODELS
from jupyter_imagegen.errors import ConfigError


def test_defaults_per_api_type():
    for api in DEFAULT_BASE_URLS:
        cfg = ImageConfig.from_env({"IMAGE_API_TYPE": api})
        assert cfg.effective_base_url == DEFAULT_BASE_URLS[api]
        assert cfg.effective_model == DEFAULT_MODELS[api]


def test_env_values_and_overrides():
    env = {"IMAGE_AUTH_TOKEN": "sk-abcdefghijklmnop", "IMAGE_API_TYPE": "openai_responses",
           "IMAGE_BASE_URL": "http://127.0.0.1:8000/v1/", "IMAGE_MODEL": "gpt-4.1", "IMAGE_TIMEOUT": "30",
           "IMAGE_MAX_RETRIES": "4"}
    cfg = ImageConfig.from_env(env)
    assert (cfg.api_type, cfg.base_url, cfg.model, cfg.timeout, cfg.max_attempts) == (
        "openai_responses", "http://127.0.0.1:8000/v1", "gpt-4.1", 30.0, 5)
    assert ImageConfig.from_env(env, model="gpt-5", timeout=5).model == "gpt-5"
    assert ImageConfig.from_env({"IMAGE_MAX_ATTEMPTS": "2", "IMAGE_MAX_RETRIES": "9"}).max_attempts == 2


@pytest.mark.parametrize("env,match", [
    ({"IMAGE_API_TYPE": "dalle"}, r"IMAGE_API_TYPE='dalle'.*openrouter_chat, openai_images, openai_responses"),
    ({"IMAGE_BASE_URL": "api.openai.com/v1"}, r"IMAGE_BASE_URL=.*scheme and host"),
    ({"IMAGE_BASE_URL": "ftp://x/v1"}, r"IMAGE_BASE_URL"),
    ({"IMAGE_TIMEOUT": "soon"}, r"IMAGE_TIMEOUT='soon' must be a number of seconds"),
    ({"IMAGE_TIMEOUT": "-1"}, r"IMAGE_TIMEOUT"),
    ({"IMAGE_MAX_ATTEMPTS": "0"}, r"IMAGE_MAX_ATTEMPTS"),
    ({"IMAGE_MAX_RETRIES": "two"}, r"IMAGE_MAX_RETRIES='two' must be a whole number"),
])
def test_bad_env_values_name_the_variable(env, match):
    with pytest.raises(ConfigError, match=match):
        ImageConfig.from_env(env)


def test_unknown_override_is_refused():
    with pytest.raises(ConfigError, match="unknown setting"):
        ImageConfig.from_env({}, colour="red")


def test_token_is_masked_in_repr():
    token = "sk-or-v1-0123456789abcdef0123456789"
    cfg = ImageConfig.from_env({"IMAGE_AUTH_TOKEN": token})
    assert token not in repr(cfg) and token not in str(cfg)
    assert cfg.masked_token == "sk-o...6789"
    assert token not in cfg.auth_hint and "IMAGE_AUTH_TOKEN" in cfg.auth_hint
    assert mask_token("short") == "****" and mask_token(None) == "(none)"
