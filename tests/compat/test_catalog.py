"""The model catalog of issue 9 through the official ``openai`` SDK (and plain HTTP where the SDK
cannot look): every model, Google's pixel tables, ``/v1/models`` capabilities, the OpenAI image
parameters, image streaming, the fallback to another upstream model, the config file, and
``nanogate models export`` / ``models check``.

What each test asserts is what a user of the gateway sees: the bytes' real format and pixel
size (decoded with Pillow, never trusted from a header), the response fields, the error's
status and ``param``, the CLI's exit code and lines.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import openai
import pytest
from PIL import Image

from conftest import CLI_TIMEOUT, _demo_in_temp_dir, sdk_client, wait_out_key_cache
from test_edits import small_png
from test_openai_sdk import PNG_SIGNATURE, check_usage

PROMPT = "a banana on the moon"

TEN_RATIOS = ["1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"]
FOURTEEN_RATIOS = TEN_RATIOS + ["1:4", "4:1", "1:8", "8:1"]
OUTPUT_FORMATS = {"png", "jpeg", "webp"}

# The spec's catalog: name → what /v1/models must say about it.
CATALOG = {
    "nano-banana": dict(family="flash25", ratios=TEN_RATIOS, sizes=[], max_images=6, url=True),
    "gemini-2.5-flash-image": dict(family="flash25", ratios=TEN_RATIOS, sizes=[], max_images=6, url=False),
    "nano-banana-pro": dict(family="pro3", ratios=TEN_RATIOS, sizes=["1K", "2K", "4K"], max_images=14, url=True),
    "gemini-3-pro-image-preview": dict(family="pro3", ratios=TEN_RATIOS, sizes=["1K", "2K", "4K"], max_images=14, url=False),
    "gemini-3-pro-image": dict(family="pro3", ratios=TEN_RATIOS, sizes=["1K", "2K", "4K"], max_images=14, url=True),
    # A fixed-tier name takes a ratio or its own tier in `size` (the spec's table), so its own tier is all it lists.
    "nano-banana-pro-2k": dict(family="pro3", ratios=TEN_RATIOS, sizes=["2K"], max_images=14, url=True),
    "nano-banana-pro-4k": dict(family="pro3", ratios=TEN_RATIOS, sizes=["4K"], max_images=14, url=True),
    "nano-banana-2": dict(family="flash31", ratios=FOURTEEN_RATIOS, sizes=["512", "1K", "2K", "4K"], max_images=14, url=True),
    "gemini-3.1-flash-image": dict(family="flash31", ratios=FOURTEEN_RATIOS, sizes=["512", "1K", "2K", "4K"], max_images=14, url=True),
    "nano-banana-2.1": dict(family="flash21", ratios=FOURTEEN_RATIOS, sizes=["1K", "2K", "4K"], max_images=14, url=True),
    "gemini-nano-banana-2.1": dict(family="flash21", ratios=FOURTEEN_RATIOS, sizes=["1K", "2K", "4K"], max_images=14, url=True),
}
# This module's gateway is an operator's whose Google project still has Nano Banana 2
# (`gemini-3.1-flash-image`, shut down for everyone else on 2026-10-29): the NB2 names are
# configured on it, and the emulator serves it again, so its 512 tier stays tested. The
# defaults (NB2 names on 2.1, a new operator) are tested at the end of the module.
NB2_ON_31 = {"NANOGATE_UPSTREAM_FLASH31": "gemini-3.1-flash-image", "NANOGATE_DEMO_REVIVED": "gemini-3.1-flash-image"}


@pytest.fixture(scope="module")
def gateway(nanogate_bin, tmp_path_factory):
    with _demo_in_temp_dir(nanogate_bin, tmp_path_factory, "nanogate-catalog", env=NB2_ON_31) as running:
        yield running


@pytest.fixture(scope="module")
def make_client(gateway):
    return lambda api_key: sdk_client(gateway, api_key)


@pytest.fixture(scope="module")
def client(make_client, gateway):
    return make_client(gateway.key)


@pytest.fixture(scope="module")
def cli(nanogate_bin, gateway):
    def run(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(nanogate_bin), *args, "--data-dir", str(gateway.data_dir)], capture_output=True, text=True, timeout=CLI_TIMEOUT
        )
        wait_out_key_cache(args)
        return result

    return run
FLASH25_NAMES = [name for name, entry in CATALOG.items() if entry["family"] == "flash25"]
PRO_NAMES = [name for name, entry in CATALOG.items() if entry["family"] == "pro3"]
FLASH31_NAMES = [name for name, entry in CATALOG.items() if entry["family"] == "flash31"]

# Output image tokens per image, as the emulator bills them (Google's figures).
FLASH25_TOKENS = 1290
PRO_TOKENS = 1120  # 1K and 2K
PRO_4K_TOKENS = 2000
NB2_TOKENS = {"512": 747, "1K": 1120, "2K": 1680, "4K": 2520}
# Input image tokens per image the emulator bills.
FLASH25_INPUT_TOKENS = 258
PRO_INPUT_TOKENS = 560
NB2_INPUT_TOKENS = 560

PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": (".png",), "jpeg": (".jpg", ".jpeg"), "webp": (".webp",)}


# ---------------------------------------------------------------------------------------------
# Helpers


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def magic_format(data: bytes) -> str | None:
    """The image format the bytes' magic number says: png, jpeg, webp, or None."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def decode(data: bytes) -> tuple[str, tuple[int, int]]:
    """(format, (width, height)) of image bytes: magic number, then a full Pillow decode."""
    fmt = magic_format(data)
    assert fmt is not None, f"not a PNG, JPEG or WebP (starts with {data[:12]!r})"
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == PIL_FORMATS[fmt], f"magic says {fmt}, Pillow says {image.format}"
        image.load()  # the whole image, so truncated or corrupt bytes fail here
        return fmt, image.size


def fetch(url: str, base_url: str) -> tuple[bytes, str]:
    """GET a signed image URL of the gateway without auth; (bytes, Content-Type)."""
    parsed = urllib.parse.urlsplit(url)
    assert parsed.netloc == urllib.parse.urlsplit(base_url).netloc, url
    assert parsed.path.startswith("/v1/files/images/"), url
    with urllib.request.urlopen(url, timeout=120) as response:
        assert response.status == 200
        return response.read(), response.headers.get_content_type()


def image_bytes(image, base_url: str) -> bytes:
    """The bytes of one ``data[i]``; a URL must be served with the real type and a matching name."""
    if image.b64_json is not None:
        assert image.url is None
        return base64.b64decode(image.b64_json, validate=True)
    assert image.url, "image has neither b64_json nor url"
    data, content_type = fetch(image.url, base_url)
    fmt = magic_format(data)
    assert content_type == CONTENT_TYPES.get(fmt), f"{fmt} bytes served as {content_type}"
    assert urllib.parse.urlsplit(image.url).path.lower().endswith(EXTENSIONS[fmt]), image.url
    return data


def check_images(result, base_url: str, size: tuple[int, int], fmt: str = "png", quality: str | None = None, count: int = 1) -> list[bytes]:
    """Every image decodes to ``size`` in ``fmt``, and the top-level fields say so."""
    assert isinstance(result, openai.types.ImagesResponse)
    assert result.data is not None and len(result.data) == count
    images = [image_bytes(image, base_url) for image in result.data]
    for data in images:
        assert decode(data) == (fmt, size)
    assert result.output_format == fmt
    assert result.size == f"{size[0]}x{size[1]}"
    assert result.background == "opaque"
    if quality is not None:
        assert result.quality == quality
    return images


def generate(client, model: str, **kwargs):
    """images.generate with base64 output unless the test asks otherwise."""
    kwargs.setdefault("response_format", "b64_json")
    return client.images.generate(model=model, prompt=kwargs.pop("prompt", PROMPT), **kwargs)


def bad_request(call) -> openai.BadRequestError:
    """Run ``call`` and return the BadRequestError (400) it must raise."""
    with pytest.raises(openai.BadRequestError) as excinfo:
        call()
    assert excinfo.value.status_code == 400
    assert excinfo.value.type == "invalid_request_error"
    return excinfo.value


def http_json(method: str, url: str, key: str | None = None, body: dict | None = None) -> tuple[int, dict]:
    """A plain JSON request; (status, decoded body) also for error statuses."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=180) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def list_models(gateway) -> list[dict]:
    """``GET /v1/models`` as plain JSON objects, sorted by id."""
    status, body = http_json("GET", f"{gateway.base_url}/models", gateway.key)
    assert status == 200, body
    assert body["object"] == "list"
    return sorted(body["data"], key=lambda model: model["id"])


# ---------------------------------------------------------------------------------------------
# Every model, Google's pixel tables


@pytest.mark.parametrize(
    "model, size, tokens, quality",
    [
        ("nano-banana", (1024, 1024), FLASH25_TOKENS, "medium"),
        ("gemini-2.5-flash-image", (1024, 1024), FLASH25_TOKENS, "medium"),
        ("nano-banana-pro", (1024, 1024), PRO_TOKENS, "medium"),
        ("gemini-3-pro-image-preview", (1024, 1024), PRO_TOKENS, "medium"),
        ("gemini-3-pro-image", (1024, 1024), PRO_TOKENS, "medium"),
        ("nano-banana-pro-2k", (2048, 2048), PRO_TOKENS, "high"),
        ("nano-banana-pro-4k", (4096, 4096), PRO_4K_TOKENS, "high"),
        ("nano-banana-2", (1024, 1024), NB2_TOKENS["1K"], "medium"),
        ("gemini-3.1-flash-image", (1024, 1024), NB2_TOKENS["1K"], "medium"),
    ],
)
def test_every_model_generates(client, gateway, model, size, tokens, quality):
    """Each catalog name answers a plain request with a PNG of its default size and Google's usage."""
    result = generate(client, model)

    check_images(result, gateway.base_url, size, quality=quality)
    check_usage(result.usage, tokens)


# model, request kwargs, expected pixels, output image tokens, quality
PIXEL_CELLS = [
    pytest.param("nano-banana-2", {"size": "512"}, (512, 512), NB2_TOKENS["512"], "low", id="nb2-512"),
    pytest.param("nano-banana-2", {"size": "0.5k", "extra_body": {"aspect_ratio": "16:9"}}, (688, 384), NB2_TOKENS["512"], "low", id="nb2-0.5k-16:9"),
    pytest.param("nano-banana-2", {"size": "688x384"}, (688, 384), NB2_TOKENS["512"], "low", id="nb2-table-688x384"),
    pytest.param("nano-banana-2", {"size": "1:4"}, (512, 2048), NB2_TOKENS["1K"], "medium", id="nb2-1:4"),
    pytest.param("nano-banana-2", {"size": "1k", "extra_body": {"aspect_ratio": "4:1"}}, (2048, 512), NB2_TOKENS["1K"], "medium", id="nb2-1k-4:1"),
    pytest.param("nano-banana-2", {"size": "8:1"}, (3072, 384), NB2_TOKENS["1K"], "medium", id="nb2-8:1"),
    pytest.param("gemini-3.1-flash-image", {"size": "2K", "extra_body": {"aspect_ratio": "16:9"}}, (2752, 1536), NB2_TOKENS["2K"], "high", id="3.1-2K-16:9"),
    pytest.param("gemini-3-pro-image", {"size": "1K", "extra_body": {"aspect_ratio": "21:9"}}, (1584, 672), PRO_TOKENS, "medium", id="pro-1K-21:9"),
    pytest.param("nano-banana", {"size": "4:5"}, (896, 1152), FLASH25_TOKENS, "medium", id="flash25-4:5"),
]


@pytest.mark.parametrize("model, kwargs, size, tokens, quality", PIXEL_CELLS)
def test_pixel_tables(client, gateway, model, kwargs, size, tokens, quality):
    """Ratios and tiers land on the cell of Google's table, billed at that tier's tokens."""
    result = generate(client, model, **kwargs)

    check_images(result, gateway.base_url, size, quality=quality)
    check_usage(result.usage, tokens)


@pytest.mark.parametrize(
    "model, kwargs, param, accepted",
    [
        pytest.param("nano-banana-pro", {"size": "1:4"}, "size", TEN_RATIOS, id="pro-size-1:4"),
        pytest.param("nano-banana-pro", {"extra_body": {"aspect_ratio": "8:1"}}, "aspect_ratio", TEN_RATIOS, id="pro-aspect-8:1"),
        pytest.param("gemini-3-pro-image", {"size": "2k", "extra_body": {"aspect_ratio": "1:8"}}, "aspect_ratio", TEN_RATIOS, id="pro-2k-aspect-1:8"),
        pytest.param("nano-banana", {"size": "4:1"}, "size", TEN_RATIOS, id="flash25-size-4:1"),
        pytest.param("nano-banana-2", {"size": "7:3"}, "size", FOURTEEN_RATIOS, id="nb2-size-7:3"),
    ],
)
def test_unsupported_ratio_names_field_and_accepted_values(client, model, kwargs, param, accepted):
    """A ratio the model does not take is a 400 on the field that carried it, listing what it takes."""
    error = bad_request(lambda: generate(client, model, **kwargs))

    assert error.param == param
    for ratio in accepted:
        assert ratio in error.message, f"{ratio} missing from: {error.message}"


# ---------------------------------------------------------------------------------------------
# /v1/models capabilities


def test_models_carry_capabilities(client):
    """Every model object says what it accepts, as the spec's table does."""
    models = {model.id: model.to_dict() for model in client.models.list().data}
    assert set(models) == set(CATALOG)
    for name, expected in CATALOG.items():
        capabilities = models[name].get("capabilities")
        assert isinstance(capabilities, dict), f"{name}: no capabilities"
        assert capabilities["family"] == expected["family"], name
        assert len(capabilities["aspect_ratios"]) == len(set(capabilities["aspect_ratios"])), name
        assert set(capabilities["aspect_ratios"]) == set(expected["ratios"]), name
        assert len(capabilities["sizes"]) == len(set(capabilities["sizes"])), name
        assert set(capabilities["sizes"]) == set(expected["sizes"]), name
        assert capabilities["max_input_images"] == expected["max_images"], name
        assert capabilities["url_output"] is expected["url"], name
        assert set(capabilities["output_formats"]) == OUTPUT_FORMATS, name


def test_single_model_object_carries_capabilities(client, gateway):
    """``GET /v1/models/{id}`` answers the same object as the list."""
    listed = {model["id"]: model for model in list_models(gateway)}
    status, single = http_json("GET", f"{gateway.base_url}/models/nano-banana-2", gateway.key)

    assert status == 200
    assert single == listed["nano-banana-2"]
    assert single["capabilities"]["family"] == "flash31"


# ---------------------------------------------------------------------------------------------
# OpenAI image parameters


@pytest.mark.parametrize(
    "model, kwargs, size, quality",
    [
        pytest.param("nano-banana-2", {"quality": "low"}, (512, 512), "low", id="nb2-low"),
        pytest.param("nano-banana-2", {"quality": "low", "size": "16:9"}, (688, 384), "low", id="nb2-low-16:9"),
        pytest.param("nano-banana-2", {"quality": "medium"}, (1024, 1024), "medium", id="nb2-medium"),
        pytest.param("nano-banana-2", {"quality": "auto"}, (1024, 1024), "medium", id="nb2-auto"),
        pytest.param("nano-banana-2", {"quality": "hd", "size": "16:9"}, (2752, 1536), "high", id="nb2-hd-16:9"),
        pytest.param("nano-banana-2", {"quality": "high", "size": "1k"}, (1024, 1024), "medium", id="nb2-high-but-size-1k"),
        pytest.param("nano-banana-pro", {"quality": "standard"}, (1024, 1024), "medium", id="pro-standard"),
        pytest.param("nano-banana-pro", {"quality": "low"}, (1024, 1024), "medium", id="pro-low-is-1k"),
        pytest.param("nano-banana-pro", {"quality": "high"}, (2048, 2048), "high", id="pro-high"),
        pytest.param("nano-banana-pro", {"quality": "high", "size": "1376x768"}, (1376, 768), "medium", id="pro-high-but-pixel-size"),
        pytest.param("nano-banana-pro-2k", {"quality": "low"}, (2048, 2048), "high", id="pro-2k-low-no-effect"),
        pytest.param("nano-banana", {"quality": "high"}, (1024, 1024), "medium", id="flash25-high-no-effect"),
        pytest.param("nano-banana", {"quality": "low"}, (1024, 1024), "medium", id="flash25-low-no-effect"),
    ],
)
def test_quality_tiers(client, gateway, model, kwargs, size, quality):
    """``quality`` picks the tier (when ``size`` does not), and the response's ``quality`` names it."""
    result = generate(client, model, **kwargs)

    check_images(result, gateway.base_url, size, quality=quality)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"background": "auto"}, id="background-auto"),
        pytest.param({"background": "opaque"}, id="background-opaque"),
        pytest.param({"moderation": "auto"}, id="moderation-auto"),
        pytest.param({"moderation": "low"}, id="moderation-low"),
        pytest.param({"style": "vivid"}, id="style-vivid"),
        pytest.param({"style": "natural"}, id="style-natural"),
        pytest.param({"user": "user-1234"}, id="user"),
        pytest.param({"output_format": "png", "output_compression": 40}, id="png-ignores-compression"),
    ],
)
def test_accepted_parameters(client, gateway, kwargs):
    """OpenAI parameters Gemini has no use for are accepted and change nothing."""
    result = generate(client, "nano-banana-2", size="512", **kwargs)

    check_images(result, gateway.base_url, (512, 512), quality="low")


@pytest.mark.parametrize(
    "kwargs, param, code",
    [
        pytest.param({"quality": "ultra"}, "quality", None, id="quality"),
        pytest.param({"background": "transparent"}, "background", "unsupported_value", id="background-transparent"),
        pytest.param({"output_format": "bmp"}, "output_format", None, id="output_format"),
        pytest.param({"output_format": "jpeg", "output_compression": 101}, "output_compression", None, id="compression-101"),
        pytest.param({"output_format": "jpeg", "output_compression": -1}, "output_compression", None, id="compression-negative"),
        pytest.param({"moderation": "strict"}, "moderation", None, id="moderation"),
        pytest.param({"style": "cinematic"}, "style", None, id="style"),
        pytest.param({"size": "1000x300"}, "size", None, id="size-not-a-ratio"),
    ],
)
def test_bad_parameter_values(client, kwargs, param, code):
    """A value outside what the spec accepts is a 400 naming the parameter."""
    error = bad_request(lambda: generate(client, "nano-banana-2", **kwargs))

    assert error.param == param
    assert isinstance(error.body, dict) and error.body.get("param") == param
    if code is not None:
        assert error.code == code


def test_non_ratio_size_lists_accepted(client):
    """``1000x300`` (10:3) is no ratio of nano-banana: the 400 lists what ``size`` takes."""
    error = bad_request(lambda: generate(client, "nano-banana", size="1000x300"))

    assert error.param == "size"
    assert "1000x300" in error.message
    assert "16:9" in error.message and "21:9" in error.message


@pytest.mark.parametrize("model", ["nano-banana-2", "nano-banana-pro"])
def test_size_auto_is_model_default(client, gateway, model):
    """``size: auto`` is the model's default, 1:1 at 1K."""
    result = generate(client, model, size="auto")

    check_images(result, gateway.base_url, (1024, 1024), quality="medium")


@pytest.mark.parametrize(
    "model, size, expected, quality",
    [
        pytest.param("nano-banana", "1920x1080", (1344, 768), "medium", id="flash25-1920x1080"),
        pytest.param("nano-banana-pro", "1920x1080", (2752, 1536), "high", id="pro-1920x1080-is-2k"),
        pytest.param("nano-banana-2", "1920x1080", (2752, 1536), "high", id="nb2-1920x1080-is-2k"),
        pytest.param("nano-banana-2", "1280x720", (1376, 768), "medium", id="nb2-1280x720-is-1k"),
        pytest.param("nano-banana-2", "600x600", (1024, 1024), "medium", id="nb2-600x600-is-1k"),
        pytest.param("nano-banana-2", "400x100", (1024, 256), "low", id="nb2-400x100-is-512-4:1"),
    ],
)
def test_exact_ratio_pixel_size(client, gateway, model, size, expected, quality):
    """A WxH of one of the model's exact ratios gets that ratio at the smallest tier that reaches it."""
    result = generate(client, model, size=size)

    check_images(result, gateway.base_url, expected, quality=quality)


def test_open_webui_image_engine_request(client, gateway):
    """Open WebUI's OpenAI image engine posts ``n`` and its default IMAGE_SIZE ``512x512``
    (backend/open_webui/routers/images.py): on nano-banana-2 that is the 512 tier."""
    result = client.images.generate(
        model="nano-banana-2", prompt=PROMPT, n=2, size="512x512", response_format="b64_json"
    )

    check_images(result, gateway.base_url, (512, 512), quality="low", count=2)
    check_usage(result.usage, 2 * NB2_TOKENS["512"])


@pytest.mark.parametrize(
    "requested, fmt",
    [("png", "png"), ("jpeg", "jpeg"), ("jpg", "jpeg"), ("webp", "webp")],
)
def test_output_format_converts(client, gateway, requested, fmt):
    """``output_format`` gives bytes of that format (Gemini answers PNG here) of the table's size."""
    result = generate(client, "nano-banana-2", size="512", output_format=requested)

    check_images(result, gateway.base_url, (512, 512), fmt=fmt, quality="low")


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_output_compression_changes_bytes(client, gateway, fmt):
    """``output_compression`` 20 gives smaller bytes than 95, both still the right image."""
    sizes = {}
    for compression in (20, 95):
        result = generate(client, "nano-banana-2", size="1:1", output_format=fmt, output_compression=compression)
        (data,) = check_images(result, gateway.base_url, (1024, 1024), fmt=fmt, quality="medium")
        sizes[compression] = len(data)

    assert sizes[20] < sizes[95], sizes


def test_mislabelled_jpeg_is_reported_as_jpeg(client, gateway):
    """Gemini's JPEG labelled image/png comes back as what it is: JPEG bytes, ``output_format`` jpeg."""
    result = generate(client, "nano-banana", size="16:9", prompt=f"{PROMPT} [emulate:jpeg]")

    check_images(result, gateway.base_url, (1344, 768), fmt="jpeg", quality="medium")


def test_mislabelled_jpeg_url_is_served_as_jpeg(client, gateway):
    """As a URL, the same JPEG is served as image/jpeg under a .jpg name (checked in image_bytes)."""
    result = generate(client, "nano-banana-2", size="512", prompt=f"{PROMPT} [emulate:jpeg]", response_format="url")

    assert result.data and result.data[0].url and result.data[0].b64_json is None
    check_images(result, gateway.base_url, (512, 512), fmt="jpeg", quality="low")


def test_mislabelled_jpeg_converted_when_png_asked(client, gateway):
    """Asking ``output_format: png`` converts Gemini's JPEG to PNG."""
    result = generate(client, "nano-banana-2", size="512", prompt=f"{PROMPT} [emulate:jpeg]", output_format="png")

    check_images(result, gateway.base_url, (512, 512), fmt="png", quality="low")


@pytest.mark.parametrize(
    "model, kwargs, size, fmt",
    [
        pytest.param("nano-banana-2", {"size": "512"}, (512, 512), "png", id="nb2-png"),
        pytest.param("gemini-3-pro-image", {}, (1024, 1024), "png", id="pro-png"),
        pytest.param("gemini-3.1-flash-image", {"size": "512", "output_format": "webp"}, (512, 512), "webp", id="3.1-webp"),
    ],
)
def test_url_answers_have_real_type_and_name(client, gateway, model, kwargs, size, fmt):
    """URL answers of the new names: served with the bytes' Content-Type, extension to match."""
    result = generate(client, model, response_format="url", **kwargs)

    assert result.data and result.data[0].url and result.data[0].b64_json is None
    check_images(result, gateway.base_url, size, fmt=fmt)


# ---------------------------------------------------------------------------------------------
# Edits: input image limits, input_fidelity, mask


@pytest.mark.parametrize(
    "model, count, input_tokens",
    [("nano-banana-2", 14, 14 * NB2_INPUT_TOKENS), ("gemini-3-pro-image", 14, 14 * PRO_INPUT_TOKENS)],
)
def test_fourteen_input_images_accepted(client, gateway, model, count, input_tokens):
    """Pro and NB2 names take up to 14 input images; every one reaches Gemini."""
    files = [(f"in{i}.png", small_png(), "image/png") for i in range(count)]

    result = client.images.edit(model=model, image=files, prompt=PROMPT, response_format="b64_json")

    check_images(result, gateway.base_url, (1024, 1024))
    assert result.usage.input_tokens_details.image_tokens == input_tokens


@pytest.mark.parametrize("model, count", [("nano-banana-2", 15), ("nano-banana", 7), ("gemini-2.5-flash-image", 7)])
def test_too_many_input_images(client, model, count):
    """One image over the model's maximum is a 400 on ``image``, code too_many_images."""
    files = [(f"in{i}.png", small_png(), "image/png") for i in range(count)]

    error = bad_request(lambda: client.images.edit(model=model, image=files, prompt=PROMPT, response_format="b64_json"))

    assert error.param == "image"
    assert error.code == "too_many_images"


@pytest.mark.parametrize("fidelity", ["high", "low"])
def test_input_fidelity_accepted(client, gateway, fidelity):
    """``input_fidelity`` high/low is accepted on edits and changes nothing."""
    result = client.images.edit(
        model="nano-banana", image=("a.png", small_png(), "image/png"), prompt=PROMPT,
        input_fidelity=fidelity, response_format="b64_json",
    )

    check_images(result, gateway.base_url, (1024, 1024))


def test_bad_input_fidelity(client):
    """``input_fidelity`` other than high/low is a 400 naming it."""
    error = bad_request(
        lambda: client.images.edit(
            model="nano-banana", image=("a.png", small_png(), "image/png"), prompt=PROMPT,
            input_fidelity="medium", response_format="b64_json",
        )
    )

    assert error.param == "input_fidelity"


@pytest.mark.parametrize("model", ["nano-banana-pro", "nano-banana-2"])
def test_mask_refused_on_new_families(client, model):
    """Gemini takes no mask, on the pro and NB2 names too: 400 about ``mask``."""
    error = bad_request(
        lambda: client.images.edit(
            model=model, image=("a.png", small_png(), "image/png"),
            mask=("mask.png", small_png(), "image/png"), prompt=PROMPT, response_format="b64_json",
        )
    )

    assert error.param == "mask"


# ---------------------------------------------------------------------------------------------
# Image streaming


def stream_events(stream) -> list:
    """Every event of an image stream, read by the SDK's own SSE parser."""
    assert isinstance(stream, openai.Stream)
    with stream:
        return list(stream)


def check_image_stream(events: list, prefix: str, size: tuple[int, int], max_partials: int) -> tuple[list, object]:
    """Partial images first (indices 0, 1, …), then exactly one completed event, last; returns both."""
    assert events, "empty stream"
    types = [event.type for event in events]
    assert set(types) <= {f"{prefix}.partial_image", f"{prefix}.completed"}, types
    assert types.count(f"{prefix}.completed") == 1, types
    assert types[-1] == f"{prefix}.completed", types
    partials = events[:-1]
    assert len(partials) <= max_partials, types
    for index, partial in enumerate(partials):
        assert partial.partial_image_index == index
        decode(base64.b64decode(partial.b64_json, validate=True))  # a real image, whatever its size

    completed = events[-1]
    assert decode(base64.b64decode(completed.b64_json, validate=True)) == ("png", size)
    assert completed.size == f"{size[0]}x{size[1]}"
    assert completed.output_format == "png"
    assert completed.background == "opaque"
    usage = completed.usage
    assert usage is not None, "completed event has no usage"
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens == usage.input_tokens_details.image_tokens + usage.input_tokens_details.text_tokens
    return partials, completed


def test_generation_stream_with_partial_images(client):
    """nano-banana-pro streams its interim thought image as a partial, then the final image with usage."""
    events = stream_events(
        client.images.generate(model="nano-banana-pro", prompt=PROMPT, stream=True, partial_images=2)
    )

    partials, completed = check_image_stream(events, "image_generation", (1024, 1024), max_partials=2)
    assert len(partials) >= 1, "the pro family's thought image did not come as a partial"
    assert completed.quality == "medium"
    assert completed.usage.output_tokens >= PRO_TOKENS


def test_generation_stream_without_partials(client):
    """``partial_images: 0`` streams only the final image."""
    events = stream_events(
        client.images.generate(model="nano-banana-pro", prompt=PROMPT, stream=True, partial_images=0)
    )

    partials, _ = check_image_stream(events, "image_generation", (1024, 1024), max_partials=0)
    assert partials == []


def test_nb2_stream_has_no_partials(client):
    """Only the pro family makes interim images: nano-banana-2 streams just the completed event."""
    events = stream_events(
        client.images.generate(model="nano-banana-2", prompt=PROMPT, size="512", stream=True, partial_images=3)
    )

    partials, completed = check_image_stream(events, "image_generation", (512, 512), max_partials=0)
    assert partials == []
    assert completed.quality == "low"


def test_edit_stream_with_partial_images(client):
    """Edits stream as ``image_edit.*`` events; the input image is billed."""
    events = stream_events(
        client.images.edit(
            model="nano-banana-pro", image=("in.png", small_png(), "image/png"), prompt=PROMPT,
            stream=True, partial_images=2,
        )
    )

    partials, completed = check_image_stream(events, "image_edit", (1024, 1024), max_partials=2)
    assert len(partials) >= 1
    assert completed.usage.input_tokens_details.image_tokens == PRO_INPUT_TOKENS


def test_flash_edit_stream_passes_the_image_through(client):
    """A flash edit streamed: its one ``image_edit.completed`` event carries Google's base64 as it
    arrives (usage after it); the official SDK reads it like any other, the input image billed."""
    events = stream_events(
        client.images.edit(model="nano-banana-2.1", image=("in.png", small_png(), "image/png"), prompt=PROMPT, size="2k", stream=True)
    )

    partials, completed = check_image_stream(events, "image_edit", (2048, 2048), max_partials=0)
    assert partials == []
    assert completed.usage.input_tokens_details.image_tokens > 0
    assert completed.usage.output_tokens > 0


@pytest.mark.parametrize("partial_images", [4, 5])
def test_partial_images_out_of_range(client, partial_images):
    """``partial_images`` above 3 is a 400, before any streaming."""
    error = bad_request(
        lambda: client.images.generate(model="nano-banana-pro", prompt=PROMPT, stream=True, partial_images=partial_images)
    )

    assert error.param == "partial_images"


def read_sse(response) -> list[tuple[str | None, str]]:
    """(event name, data) of every SSE event of an open HTTP response; comments skipped."""
    events: list[tuple[str | None, str]] = []
    name: str | None = None
    data: list[str] = []
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                events.append((name, "\n".join(data)))
            name, data = None, []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            name = line[len("event:"):].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:"):].removeprefix(" "))
    if data:
        events.append((name, "\n".join(data)))
    return events


def post_stream(gateway, path: str, body: dict):
    """POST a JSON body and return the open response (HTTPError for an error status)."""
    request = urllib.request.Request(
        f"{gateway.base_url}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {gateway.key}", "Content-Type": "application/json"},
    )
    return urllib.request.urlopen(request, timeout=180)


def test_stream_event_names_match_types(gateway):
    """On the wire, each SSE ``event:`` line names the event its data's ``type`` says."""
    with post_stream(gateway, "/images/generations", {"model": "nano-banana-pro", "prompt": PROMPT, "stream": True, "partial_images": 1}) as response:
        assert response.status == 200
        assert response.headers.get_content_type() == "text/event-stream"
        events = read_sse(response)

    names = [name for name, _ in events]
    assert names == ["image_generation.partial_image", "image_generation.completed"], names
    for name, data in events:
        assert json.loads(data)["type"] == name


def test_stream_error_is_an_error_event(gateway):
    """A refused image while streaming: an HTTP 400, or (once the stream has begun) an
    ``event: error`` with ``{"type":"error","error":{...}}`` and no completed event."""
    body = {"model": "nano-banana-pro", "prompt": f"{PROMPT} [emulate:image_safety]", "stream": True, "partial_images": 1}
    try:
        with post_stream(gateway, "/images/generations", body) as response:
            events = read_sse(response)
    except urllib.error.HTTPError as error:
        assert error.code == 400
        assert json.loads(error.read())["error"]["code"] == "content_policy_violation"
        return

    names = [name for name, _ in events]
    assert "image_generation.completed" not in names, names
    assert names and names[-1] == "error", names
    data = json.loads(events[-1][1])
    assert data["type"] == "error"
    assert data["error"]["code"] == "content_policy_violation"


# ---------------------------------------------------------------------------------------------
# Fallback to another upstream model


def test_retired_upstream_falls_back_to_2_1(private_gateway):
    """With gemini-2.5-flash-image retired upstream, the 2.5 names are served by
    gemini-nano-banana-2.1: its 1K cell (848x1264 for 2:3), its usage, and a header saying so."""
    gateway = private_gateway(env={"NANOGATE_DEMO_RETIRED": "gemini-2.5-flash-image"})
    client = sdk_client(gateway)

    for model in FLASH25_NAMES:
        raw = client.images.with_raw_response.generate(model=model, prompt=PROMPT, size="2:3", response_format="b64_json")
        assert raw.headers.get("X-NanoGate-Upstream-Model") == "gemini-nano-banana-2.1", model
        result = raw.parse()
        check_images(result, gateway.base_url, (848, 1264))
        check_usage(result.usage, NB2_TOKENS["1K"])


def test_a_new_operator_gets_an_image_from_every_name(private_gateway):
    """``serve --demo --new-project`` answers as Google answers a new operator today: 2.5 refused
    to the project (403 naming the model), 3.1 shut down. Every one of the spec's six names and
    the new ones still answers with an image; the 2.5 names and the NB2 names come from 2.1."""
    gateway = private_gateway(args=["--new-project"])
    client = sdk_client(gateway)
    served_by = {}
    for model in CATALOG:
        raw = client.images.with_raw_response.generate(model=model, prompt=PROMPT, response_format="b64_json")
        result = raw.parse()
        assert result.data and base64.b64decode(result.data[0].b64_json).startswith(PNG_SIGNATURE), model
        served_by[model] = raw.headers.get("X-NanoGate-Upstream-Model")
    for model in FLASH25_NAMES + ["nano-banana-2", "gemini-3.1-flash-image", "nano-banana-2.1", "gemini-nano-banana-2.1"]:
        assert served_by[model] == "gemini-nano-banana-2.1", (model, served_by)
    for model in PRO_NAMES:
        assert served_by[model] == "gemini-3-pro-image", (model, served_by)
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(model="nano-banana-2", prompt=PROMPT, size="512")
    assert refused.value.body["param"] == "size", "2.1 has no 512 tier"


# ---------------------------------------------------------------------------------------------
# Config file


MY_BANANA_YAML = """\
# NanoGate test config: a new name, a disabled one, and two settings.
port: {file_port}
url_ttl: 600
models:
  - name: my-banana
    like: nano-banana
    upstream: gemini-2.5-flash-image
    fallback: [gemini-3.1-flash-image]
    url_output: true
    enabled: true
    max_input_images: 6
    prices: {{input: 0.30, output_text: 2.50, output_image: 30}}
  - name: gemini-2.5-flash-image
    enabled: false
"""


def my_banana_json(file_port: int) -> str:
    """The same config as MY_BANANA_YAML, as JSON."""
    return json.dumps(
        {
            "port": file_port,
            "url_ttl": 600,
            "models": [
                {
                    "name": "my-banana", "like": "nano-banana", "upstream": "gemini-2.5-flash-image",
                    "fallback": "gemini-3.1-flash-image", "url_output": True, "enabled": True, "max_input_images": 6,
                    "prices": {"input": 0.30, "output_text": 2.50, "output_image": 30},
                },
                {"name": "gemini-2.5-flash-image", "enabled": False},
            ],
        },
        indent=2,
    )


@pytest.mark.parametrize("form", ["yaml-flag", "json-env"])
def test_config_file_adds_and_disables_models(private_gateway, tmp_path, form):
    """A config file (``--config`` YAML or ``NANOGATE_CONFIG`` JSON) adds my-banana, turns
    gemini-2.5-flash-image off, and sets url_ttl; the ``--port`` flag beats the file's port."""
    file_port, flag_port = free_port(), free_port()
    if form == "yaml-flag":
        path = tmp_path / "nanogate.yaml"
        path.write_text(MY_BANANA_YAML.format(file_port=file_port))
        gateway = private_gateway(args=["--config", str(path)], port=flag_port)
    else:
        path = tmp_path / "nanogate.json"
        path.write_text(my_banana_json(file_port))
        gateway = private_gateway(env={"NANOGATE_CONFIG": str(path)}, port=flag_port)
    assert urllib.parse.urlsplit(gateway.base_url).port == flag_port
    client = sdk_client(gateway)

    models = {model["id"]: model for model in list_models(gateway)}
    assert "gemini-2.5-flash-image" not in models
    assert {"my-banana", "nano-banana", "nano-banana-pro", "nano-banana-2"} <= set(models)
    capabilities = models["my-banana"]["capabilities"]
    assert capabilities["family"] == "flash25"
    assert capabilities["max_input_images"] == 6
    assert capabilities["url_output"] is True
    assert set(capabilities["aspect_ratios"]) == set(TEN_RATIOS)

    before = time.time()
    result = generate(client, "my-banana", size="2:3", response_format="url")
    check_images(result, gateway.base_url, (832, 1248))
    expires = int(urllib.parse.parse_qs(urllib.parse.urlsplit(result.data[0].url).query)["expires"][0])
    assert before < expires <= time.time() + 600 + 5, f"url_ttl 600 not applied: expires in {expires - before:.0f}s"

    with pytest.raises(openai.APIStatusError) as disabled:
        generate(client, "gemini-2.5-flash-image")
    with pytest.raises(openai.APIStatusError) as unknown:
        generate(client, "dall-e-banana")
    assert disabled.value.status_code in (400, 404)
    assert disabled.value.status_code == unknown.value.status_code
    assert disabled.value.param == unknown.value.param == "model"
    assert disabled.value.code == unknown.value.code


@pytest.mark.parametrize(
    "text, entry, also",
    [
        pytest.param("models:\n  - name: odd-banana\n    like: nano-banana\n    colour: yellow\n", "odd-banana", "colour", id="unknown-key-in-entry"),
        pytest.param("models:\n  - name: ghost-banana\n    like: nope\n", "ghost-banana", "nope", id="like-names-no-model"),
        pytest.param("models:\n  - name: lonely-banana\n    upstream: gemini-2.5-flash-image\n", "lonely-banana", None, id="new-name-without-like"),
        pytest.param("colour: yellow\n", "colour", None, id="unknown-setting"),
    ],
)
def test_broken_config_stops_startup(nanogate_bin, tmp_path, text, entry, also):
    """A config the gateway cannot use stops ``serve`` with a non-zero exit, naming the entry on
    stderr (by its name, or for a model entry by its position ``models[0]``) and what is wrong."""
    path = tmp_path / "broken.yaml"
    path.write_text(text)

    try:
        result = subprocess.run(
            [str(nanogate_bin), "serve", "--demo", "--config", str(path), "--port", str(free_port()), "--data-dir", str(tmp_path / "data")],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("nanogate serve started with a broken config instead of exiting")

    assert result.returncode != 0
    named = [entry] if text.startswith(entry) else [entry, "models[0]"]
    assert any(name in result.stderr for name in named), result.stderr[-2000:]
    if also is not None:
        assert also in result.stderr, result.stderr[-2000:]
    assert "Demo API key" not in result.stdout


def test_models_export_round_trips(nanogate_bin, gateway, private_gateway, tmp_path):
    """``nanogate models export`` prints the catalog as a config that ``--config`` reads back
    unchanged: a gateway started from it lists exactly the default models."""
    export = subprocess.run(
        [str(nanogate_bin), "models", "export"], cwd=tmp_path, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=CLI_TIMEOUT,
    )
    assert export.returncode == 0, export.stderr
    assert re.search(r"^models:", export.stdout, re.MULTILINE), export.stdout[:500]
    for name in CATALOG:
        assert name in export.stdout
    path = tmp_path / "exported.yaml"
    path.write_text(export.stdout)

    exported = private_gateway(args=["--config", str(path)])

    assert list_models(exported) == list_models(private_gateway()), "the defaults (this module's gateway has NB2 on 3.1)"


# ---------------------------------------------------------------------------------------------
# nanogate models check, against the separate emulator binary


@contextlib.contextmanager
def gemini_emulator(nanogate_bin: Path, retired: tuple[str, ...] = ()) -> Iterator[str]:
    """The ``gemini-emulator`` beside the gateway binary on a free port; yields its base URL."""
    binary = nanogate_bin.parent / "gemini-emulator"
    if not binary.exists():
        pytest.fail(f"gemini-emulator not found at {binary}")
    port = free_port()
    args = [str(binary), "--port", str(port)]
    for model in retired:
        args += ["--retired", model]
    log = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"gemini-emulator exited with {proc.returncode}:\n{log.read()[-3000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                pytest.fail("gemini-emulator did not listen within 30s")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        log.close()


def says(line: str, word: str) -> bool:
    """Whether ``word`` stands as a word of ``line`` (``ok`` is not the end of ``token``)."""
    return re.search(rf"\b{word}\b", line) is not None


def check_lines(stdout: str) -> dict[str, str]:
    """The output line of each catalog model (the line whose first word is its name), lower-cased."""
    lines = {}
    for line in stdout.splitlines():
        words = [word for word in re.split(r"[\s|,;]+", line) if word]
        if words and words[0].rstrip(":") in CATALOG:
            lines[words[0].rstrip(":")] = line.lower()
    return lines


@pytest.mark.parametrize(
    "retired, exit_code, missing, clean",
    [
        pytest.param((), 0, [], list(CATALOG), id="all-served"),
        pytest.param(("gemini-3-pro-image",), 1, PRO_NAMES, FLASH25_NAMES + FLASH31_NAMES, id="pro-retired-no-fallback"),
        pytest.param(("gemini-2.5-flash-image",), 0, FLASH25_NAMES, PRO_NAMES + FLASH31_NAMES, id="flash25-retired-fallback-ok"),
    ],
)
def test_models_check(nanogate_bin, tmp_path, retired, exit_code, missing, clean):
    """``nanogate models check`` prints the model × channel matrix: a line per model with its
    upstream id, whether the channel lists it, and the id the model answers with (``nothing``
    when no id of its chain is served); it exits 1 only when an enabled model can be served by
    no id of its chain."""
    with gemini_emulator(nanogate_bin, retired) as url:
        env = {key: value for key, value in os.environ.items() if key != "NANOGATE_CONFIG"}
        env.update(GEMINI_API_KEY="anything", NANOGATE_GEMINI_BASE_URL=url)
        result = subprocess.run(
            [str(nanogate_bin), "models", "check"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=CLI_TIMEOUT,
        )

    assert result.returncode == exit_code, result.stdout + result.stderr
    lines = check_lines(result.stdout)
    assert set(lines) == set(CATALOG), result.stdout
    for name in missing:
        assert says(lines[name], "not_listed"), lines[name]
    for name in clean:
        assert not says(lines[name], "not_listed"), lines[name]
        assert says(lines[name], "listed"), lines[name]
    if retired == ("gemini-3-pro-image",):
        for name in PRO_NAMES:
            assert lines[name].split()[-1] == "nothing", f"{name} has no fallback: {lines[name]}"
    if retired == ("gemini-2.5-flash-image",):
        for name in FLASH25_NAMES:
            assert lines[name].split()[-1] == "gemini-nano-banana-2.1", f"{name}: its fallback is served: {lines[name]}"
