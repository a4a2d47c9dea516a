"""The spec's singular endpoint paths through the official ``openai`` SDK.

The spec's endpoint table lists ``/v1/image/generations`` and ``/v1/image/edits``; clients
written from it reach them with the SDK's generic ``post`` (the typed helpers use the plural
paths). Both spellings must answer alike.
"""

from __future__ import annotations

import base64

import openai
import pytest
from openai.types import ImagesResponse

from test_edits import small_png
from test_openai_sdk import PNG_SIGNATURE, png_size


@pytest.mark.parametrize("path", ["/images/generations", "/image/generations"])
def test_generations_on_both_spellings(client: openai.OpenAI, path: str) -> None:
    result = client.post(
        path,
        body={"model": "nano-banana", "prompt": "a banana", "size": "16:9", "response_format": "b64_json"},
        cast_to=ImagesResponse,
    )
    image = base64.b64decode(result.data[0].b64_json)
    assert image.startswith(PNG_SIGNATURE)
    assert png_size(image) == (1344, 768)
    assert result.usage is not None and result.usage.output_tokens > 0


@pytest.mark.parametrize("path", ["/images/edits", "/image/edits"])
def test_edits_on_both_spellings(client: openai.OpenAI, path: str) -> None:
    result = client.post(
        path,
        body={"model": "nano-banana", "prompt": "make it blue", "response_format": "b64_json"},
        files=[("image", ("in.png", small_png(96, 64), "image/png"))],
        options={"headers": {"Content-Type": "multipart/form-data"}},
        cast_to=ImagesResponse,
    )
    image = base64.b64decode(result.data[0].b64_json)
    assert image.startswith(PNG_SIGNATURE)
    assert png_size(image) == (1248, 832)  # follows the 3:2 input


@pytest.mark.parametrize("path", ["/images/generations", "/image/generations"])
def test_errors_are_the_same_on_both_spellings(client: openai.OpenAI, path: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.post(path, body={"model": "nano-banana", "prompt": "p", "size": "7:3"}, cast_to=ImagesResponse)
    assert raised.value.body["param"] == "size"
