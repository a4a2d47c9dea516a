"""The official ``openai`` SDK against NanoGate's /v1/images/generations."""

from __future__ import annotations

import base64
import struct
import urllib.parse
import urllib.request

import openai
import pytest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PROMPT = "a banana on the moon"

# Per-image output image tokens that Gemini reports.
FLASH_TOKENS = 1290
PRO_TOKENS = 1120
PRO_4K_TOKENS = 2000

# Models that answer base64 even when a URL is asked for.
ALWAYS_B64 = {"gemini-2.5-flash-image", "gemini-3-pro-image-preview"}

# model, request kwargs, expected (width, height), image tokens per image.
MODEL_CASES = [
    ("nano-banana", {"size": "16:9"}, (1344, 768), FLASH_TOKENS),
    ("gemini-2.5-flash-image", {"size": "2:3"}, (832, 1248), FLASH_TOKENS),
    ("nano-banana-pro", {"size": "2k", "extra_body": {"aspect_ratio": "16:9"}}, (2752, 1536), PRO_TOKENS),
    ("gemini-3-pro-image-preview", {"size": "1k", "extra_body": {"aspect_ratio": "2:3"}}, (848, 1264), PRO_TOKENS),
    ("nano-banana-pro-2k", {"size": "2:3"}, (1696, 2528), PRO_TOKENS),
    ("nano-banana-pro-4k", {"size": "16:9"}, (5504, 3072), PRO_4K_TOKENS),
]

# Documented sizes beyond the per-model matrix (all fetched as base64).
SIZE_CASES = [
    ("nano-banana", {}, (1024, 1024), FLASH_TOKENS),
    ("nano-banana", {"size": "1:1"}, (1024, 1024), FLASH_TOKENS),
    ("nano-banana", {"size": "2:3"}, (832, 1248), FLASH_TOKENS),
    ("nano-banana", {"size": "21:9"}, (1536, 672), FLASH_TOKENS),
    ("nano-banana", {"size": "9:16"}, (768, 1344), FLASH_TOKENS),
    ("nano-banana", {"size": "1344x768"}, (1344, 768), FLASH_TOKENS),
    ("gemini-2.5-flash-image", {"size": "16:9"}, (1344, 768), FLASH_TOKENS),
    ("nano-banana-pro", {}, (1024, 1024), PRO_TOKENS),
    ("nano-banana-pro", {"size": "1k"}, (1024, 1024), PRO_TOKENS),
    ("nano-banana-pro", {"size": "2k"}, (2048, 2048), PRO_TOKENS),
    ("nano-banana-pro", {"size": "4k"}, (4096, 4096), PRO_4K_TOKENS),
    ("nano-banana-pro", {"size": "1k", "extra_body": {"aspect_ratio": "16:9"}}, (1376, 768), PRO_TOKENS),
    ("nano-banana-pro", {"size": "2k", "extra_body": {"aspect_ratio": "1:1"}}, (2048, 2048), PRO_TOKENS),
    ("nano-banana-pro", {"size": "1k", "extra_body": {"aspect_ratio": "2:3"}}, (848, 1264), PRO_TOKENS),
    ("nano-banana-pro", {"size": "2k", "extra_body": {"aspect_ratio": "2:3"}}, (1696, 2528), PRO_TOKENS),
    ("gemini-3-pro-image-preview", {"size": "2k", "extra_body": {"aspect_ratio": "16:9"}}, (2752, 1536), PRO_TOKENS),
]


def _case_id(model: str, kwargs: dict) -> str:
    """Readable test id such as ``nano-banana-pro:2k,16:9``."""
    parts = [kwargs.get("size", "default")]
    if "extra_body" in kwargs:
        parts.append(kwargs["extra_body"]["aspect_ratio"])
    return f"{model}:{','.join(parts)}"


def png_size(data: bytes) -> tuple[int, int]:
    """Return (width, height) from a PNG's IHDR chunk (bytes 16..24, big-endian)."""
    assert data[:8] == PNG_SIGNATURE, f"not a PNG (starts with {data[:8]!r})"
    assert data[12:16] == b"IHDR", "first PNG chunk is not IHDR"
    return struct.unpack(">II", data[16:24])


def fetch_url(url: str, base_url: str) -> bytes:
    """Fetch a signed image URL without auth and check it points at the gateway."""
    parsed = urllib.parse.urlsplit(url)
    gateway = urllib.parse.urlsplit(base_url)
    assert parsed.scheme == "http" and parsed.netloc == gateway.netloc, url
    assert parsed.path.startswith("/v1/files/images/"), url
    assert "signature" in urllib.parse.parse_qs(parsed.query), url
    with urllib.request.urlopen(url, timeout=120) as response:
        assert response.status == 200
        assert response.headers.get_content_type() == "image/png"
        return response.read()


def image_bytes(image, base_url: str) -> bytes:
    """The PNG bytes of one ``data[i]`` entry, whichever form it came in."""
    if image.b64_json is not None:
        return base64.b64decode(image.b64_json, validate=True)
    assert image.url, "image has neither b64_json nor url"
    return fetch_url(image.url, base_url)


def check_usage(usage, image_tokens: int) -> None:
    """Usage is present, adds up, and reports the expected output image tokens."""
    assert usage is not None, "response has no usage"
    assert usage.output_tokens_details is not None, "usage has no output_tokens_details"
    assert usage.output_tokens_details.image_tokens == image_tokens
    assert usage.output_tokens >= usage.output_tokens_details.image_tokens
    assert usage.output_tokens == (
        usage.output_tokens_details.image_tokens + usage.output_tokens_details.text_tokens
    )
    assert usage.input_tokens == (
        usage.input_tokens_details.image_tokens + usage.input_tokens_details.text_tokens
    )
    assert usage.input_tokens_details.text_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


@pytest.mark.parametrize("response_format", ["b64_json", "url"])
@pytest.mark.parametrize(
    "model, kwargs, expected, tokens",
    [pytest.param(*case, id=_case_id(case[0], case[1])) for case in MODEL_CASES],
)
def test_generate_each_model(client, gateway, model, kwargs, expected, tokens, response_format):
    """Every model answers in the asked format (or base64 if it must) with the right PNG."""
    result = client.images.generate(
        model=model, prompt=PROMPT, response_format=response_format, **kwargs
    )

    assert isinstance(result, openai.types.ImagesResponse)
    assert result.created > 0
    assert result.data is not None and len(result.data) == 1
    image = result.data[0]
    if response_format == "b64_json" or model in ALWAYS_B64:
        assert image.b64_json, "expected b64_json"
        assert image.url is None
    else:
        assert image.url, "expected url"
        assert image.b64_json is None
    assert png_size(image_bytes(image, gateway.base_url)) == expected
    check_usage(result.usage, tokens)


@pytest.mark.parametrize(
    "model, kwargs, expected, tokens",
    [pytest.param(*case, id=_case_id(case[0], case[1])) for case in SIZE_CASES],
)
def test_documented_sizes(client, model, kwargs, expected, tokens):
    """Sizes, aspect ratios and defaults map to Google's documented pixel sizes."""
    result = client.images.generate(
        model=model, prompt=PROMPT, response_format="b64_json", **kwargs
    )

    assert result.data is not None and len(result.data) == 1
    assert png_size(base64.b64decode(result.data[0].b64_json)) == expected
    check_usage(result.usage, tokens)


def test_default_format_is_url_for_default_group(client, gateway):
    """Without response_format, a default-group key gets a URL."""
    result = client.images.generate(model="nano-banana", prompt=PROMPT, size="1:1")

    image = result.data[0]
    assert image.url and image.b64_json is None
    assert png_size(fetch_url(image.url, gateway.base_url)) == (1024, 1024)


@pytest.mark.parametrize("response_format", ["b64_json", "url"])
def test_two_images(client, gateway, response_format):
    """n=2 returns two distinct images and twice the image tokens."""
    result = client.images.generate(
        model="nano-banana", prompt=PROMPT, n=2, size="9:16", response_format=response_format
    )

    assert result.data is not None and len(result.data) == 2
    if response_format == "url":
        assert result.data[0].url != result.data[1].url
    for image in result.data:
        assert png_size(image_bytes(image, gateway.base_url)) == (768, 1344)
    check_usage(result.usage, 2 * FLASH_TOKENS)


def test_invalid_size_is_bad_request(client):
    """An unsupported ratio raises BadRequestError pointing at ``size``."""
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.images.generate(model="nano-banana", prompt=PROMPT, size="7:3")

    error = excinfo.value
    assert error.status_code == 400
    assert error.param == "size"
    assert isinstance(error.body, dict) and error.body.get("param") == "size"
    assert error.type == "invalid_request_error"
    assert "7:3" in error.message


def test_bad_key_is_authentication_error(make_client):
    """An unknown key raises AuthenticationError (401)."""
    bad = make_client("sk-ng-this-key-does-not-exist")
    with pytest.raises(openai.AuthenticationError) as excinfo:
        bad.images.generate(model="nano-banana", prompt=PROMPT)

    assert excinfo.value.status_code == 401
    assert "sk-ng-this-key-does-not-exist" not in excinfo.value.message


def test_unknown_model_is_not_found(client):
    """An unknown model raises NotFoundError (404) about ``model``."""
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.images.generate(model="dall-e-banana", prompt=PROMPT)

    assert excinfo.value.status_code == 404
    assert excinfo.value.param == "model"


def test_a_streamed_through_answer_reads_like_any_other(private_gateway):
    """``NANOGATE_STREAM_IMAGES``: the answer passes through as Google sends it; the official
    SDK reads it as it reads an answer built whole (the cost header becomes a trailer)."""
    from conftest import sdk_client

    gateway = private_gateway(env={"NANOGATE_STREAM_IMAGES": "on"})
    client = sdk_client(gateway)
    raw = client.images.with_raw_response.generate(model="nano-banana", prompt="a banana passing through", response_format="b64_json")
    result = raw.parse()
    assert raw.headers.get("transfer-encoding") == "chunked"
    png = base64.b64decode(result.data[0].b64_json)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1024, 1024) and result.size == "1024x1024" and result.output_format == "png"
    assert result.usage.output_tokens_details.image_tokens == 1290

    # n > 1 streams each image through in turn: the SDK reads them all.
    several = client.images.generate(model="nano-banana", prompt="bananas passing through", response_format="b64_json", n=3)
    assert len(several.data) == 3
    for item in several.data:
        png = base64.b64decode(item.b64_json)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and struct.unpack(">II", png[16:24]) == (1024, 1024)
    assert several.usage.output_tokens_details.image_tokens == 3 * 1290
