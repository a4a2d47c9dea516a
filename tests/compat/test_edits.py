"""The official ``openai`` SDK against NanoGate's /v1/images/edits (multipart uploads)."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import openai
import pytest

from test_openai_sdk import FLASH_TOKENS, PNG_SIGNATURE, PRO_TOKENS, check_usage, fetch_url, png_size

PROMPT = "put a small hat on the banana"

# Input image tokens the emulator reports per uploaded image, as Gemini does.
FLASH_INPUT_TOKENS = 258
PRO_INPUT_TOKENS = 560

# Input PNGs made with the gateway itself: generation size → (width, height).
INPUT_SIZES = {"16:9": (1344, 768), "1:1": (1024, 1024), "9:16": (768, 1344)}


@pytest.fixture(scope="module")
def pngs(client) -> dict[str, bytes]:
    """One real PNG per entry of INPUT_SIZES, generated through the SDK."""
    made = {}
    for size, expected in INPUT_SIZES.items():
        result = client.images.generate(
            model="nano-banana", prompt="a banana on a plate", size=size, response_format="b64_json"
        )
        data = base64.b64decode(result.data[0].b64_json, validate=True)
        assert png_size(data) == expected
        made[size] = data
    return made


def small_png(width: int = 64, height: int = 64) -> bytes:
    """A small valid RGB PNG made here, for tests where the input's pixels do not matter.

    Real 1024x1024 inputs are ~2.4 MB each; several of them per request only slow the suite.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(
        b"\x00" + b"".join(bytes((x * 4 % 256, y * 4 % 256, 128)) for x in range(width)) for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def edited_png(result: openai.types.ImagesResponse) -> bytes:
    """The single base64 image of an edit answer."""
    assert isinstance(result, openai.types.ImagesResponse)
    assert result.data is not None and len(result.data) == 1
    image = result.data[0]
    assert image.b64_json and image.url is None
    return base64.b64decode(image.b64_json, validate=True)


@pytest.mark.parametrize("size", list(INPUT_SIZES))
def test_single_image_keeps_input_aspect_ratio(client, pngs, size):
    """One image and no size: the output has the input's aspect ratio (and pixel size)."""
    result = client.images.edit(
        model="nano-banana",
        image=("a.png", pngs[size], "image/png"),
        prompt=PROMPT,
        response_format="b64_json",
    )

    assert png_size(edited_png(result)) == INPUT_SIZES[size]
    check_usage(result.usage, FLASH_TOKENS)
    assert result.usage.input_tokens_details.image_tokens == FLASH_INPUT_TOKENS


def test_three_images_pro_2k_with_aspect_ratio(client, pngs):
    """A list of three files (repeated ``image[]``) with size 2k and aspect_ratio 3:2 via extra_body."""
    files = [(f"in{i}.png", pngs[size], "image/png") for i, size in enumerate(INPUT_SIZES)]

    result = client.images.edit(
        model="nano-banana-pro",
        image=files,
        prompt=PROMPT,
        size="2k",
        response_format="b64_json",
        extra_body={"aspect_ratio": "3:2"},
    )

    assert png_size(edited_png(result)) == (2528, 1696)
    check_usage(result.usage, PRO_TOKENS)
    assert result.usage.input_tokens_details.image_tokens == 3 * PRO_INPUT_TOKENS


def test_six_images_accepted(client):
    """Six input images are the most a model takes; they are accepted."""
    files = [(f"in{i}.png", small_png(), "image/png") for i in range(6)]

    result = client.images.edit(
        model="nano-banana", image=files, prompt=PROMPT, response_format="b64_json"
    )

    assert png_size(edited_png(result)) == (1024, 1024)
    assert result.usage.input_tokens_details.image_tokens == 6 * FLASH_INPUT_TOKENS


def test_seven_images_refused(client):
    """Seven input images raise BadRequestError about ``image``."""
    files = [(f"in{i}.png", small_png(), "image/png") for i in range(7)]

    with pytest.raises(openai.BadRequestError) as excinfo:
        client.images.edit(model="nano-banana", image=files, prompt=PROMPT, response_format="b64_json")

    assert excinfo.value.status_code == 400
    assert excinfo.value.param == "image"
    assert excinfo.value.type == "invalid_request_error"


def test_non_image_file_is_named_by_index(client):
    """A text file as the second of two images is refused as ``image[1]``."""
    files = [("a.png", small_png(), "image/png"), ("notes.txt", b"hello", "text/plain")]

    with pytest.raises(openai.BadRequestError) as excinfo:
        client.images.edit(model="nano-banana", image=files, prompt=PROMPT, response_format="b64_json")

    assert excinfo.value.status_code == 400
    assert excinfo.value.param == "image[1]"
    assert isinstance(excinfo.value.body, dict) and excinfo.value.body.get("param") == "image[1]"


def test_mask_is_refused(client):
    """Gemini takes no mask: passing one raises BadRequestError about ``mask``."""
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.images.edit(
            model="nano-banana",
            image=("a.png", small_png(), "image/png"),
            mask=("mask.png", small_png(), "image/png"),
            prompt=PROMPT,
            response_format="b64_json",
        )

    assert excinfo.value.status_code == 400
    assert excinfo.value.param == "mask"


def test_default_group_gets_url(client, gateway, pngs):
    """Without response_format, the default-group demo key gets a fetchable URL."""
    result = client.images.edit(
        model="nano-banana", image=("a.png", pngs["9:16"], "image/png"), prompt=PROMPT
    )

    assert result.data is not None and len(result.data) == 1
    image = result.data[0]
    assert image.url and image.b64_json is None
    assert png_size(fetch_url(image.url, gateway.base_url)) == (768, 1344)


def test_bytesio_upload(client, pngs):
    """A file-like ``io.BytesIO`` works as the image."""
    result = client.images.edit(
        model="nano-banana", image=io.BytesIO(pngs["16:9"]), prompt=PROMPT, response_format="b64_json"
    )

    assert png_size(edited_png(result)) == INPUT_SIZES["16:9"]


@pytest.mark.parametrize("form", ["open_file", "path"])
def test_file_on_disk_upload(client, pngs, tmp_path, form):
    """A file on disk works as the image, as an open handle or as a ``pathlib.Path``."""
    path = tmp_path / "input.png"
    path.write_bytes(pngs["9:16"])

    if form == "path":
        result = client.images.edit(
            model="nano-banana", image=path, prompt=PROMPT, response_format="b64_json"
        )
    else:
        with path.open("rb") as handle:
            result = client.images.edit(
                model="nano-banana", image=handle, prompt=PROMPT, response_format="b64_json"
            )

    assert png_size(edited_png(result)) == INPUT_SIZES["9:16"]


def test_expect_100_continue_is_answered_at_once(gateway):
    """curl sends `Expect: 100-continue` with uploads over 1 MiB and waits a second for the
    interim answer before sending the body; the gateway must answer it without waiting."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(gateway.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        head = (
            "POST /v1/images/edits HTTP/1.1\r\n"
            f"Host: {url.hostname}:{url.port}\r\n"
            f"Authorization: Bearer {gateway.key}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\n"
            "Content-Length: 2000000\r\n"
            "Expect: 100-continue\r\n\r\n"
        )
        sock.sendall(head.encode())
        sock.settimeout(5)  # the interim answer comes without any body byte; generous for a busy machine
        first = sock.recv(64)
    assert first.startswith(b"HTTP/1.1 100 Continue")
