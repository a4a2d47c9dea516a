"""Google's own API through the gateway, spoken by Google's official ``google-genai`` SDK, unmodified.

The gateway serves Gemini's REST surface next to the OpenAI one:
``POST /{v1beta,v1}/models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``,
``GET /{v1beta,v1}/models`` and ``/models/{model}``, with the gateway key in ``x-goog-api-key``,
``?key=`` or ``Authorization: Bearer``, and Google-style errors
(``{"error": {"code", "message", "status"}}``). ``{model}`` is a gateway model name or an upstream id.

google-genai 1.x talks to ``/v1beta/`` by default, 3.x to ``/v1/``: every SDK test runs once with
the SDK's own default and once with ``api_version="v1beta"``, and checks (through an httpx event
hook passed in ``client_args``, a public option) which path each request really went to.

All of it against the session ``gateway`` (``nanogate serve --demo``, the offline emulator, which
renders PNGs of Google's own pixel sizes).
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
from google import genai
from google.genai import errors, types
from PIL import Image

from conftest import CLIENT_TIMEOUT, Gateway

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Google's tables: gemini-2.5-flash-image 16:9 is 1344x768 (one size, no imageSize);
# gemini-3-pro-image 16:9 at 2K is 2752x1536.
FLASH_16x9 = (1344, 768)
PRO_16x9_2K = (2752, 1536)
SDK_MAJOR = int(genai.__version__.split(".")[0])
# The version the pinned SDK picks on its own: v1 from google-genai 3 on, v1beta before.
SDK_DEFAULT_VERSION = "v1" if SDK_MAJOR >= 3 else "v1beta"

# (id, api_version passed to the SDK or None for its default, version expected in the path)
VERSIONS = [
    pytest.param(None, SDK_DEFAULT_VERSION, id=f"sdk-default-{SDK_DEFAULT_VERSION}"),
    pytest.param("v1beta", "v1beta", id="v1beta"),
]


def root_url(gateway: Gateway) -> str:
    """The gateway's root URL (the fixture's base_url ends in /v1, for the OpenAI SDK)."""
    return gateway.base_url.removesuffix("/v1")


class Recorder:
    """Paths of the requests an SDK client sent (httpx request hook)."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, request) -> None:
        self.paths.append(request.url.path)

    def assert_version(self, version: str) -> None:
        assert self.paths, "the SDK sent no request"
        for path in self.paths:
            assert path.startswith(f"/{version}/models"), f"{path} is not under /{version}/"


def make_client(gateway: Gateway, api_version: str | None, api_key: str | None = None) -> tuple[genai.Client, Recorder]:
    """A google-genai client for the Gemini Developer API, pointed at the gateway, no retries."""
    recorder = Recorder()
    options: dict[str, Any] = {
        "base_url": root_url(gateway),
        "timeout": int(CLIENT_TIMEOUT * 1000),  # milliseconds
        "client_args": {"event_hooks": {"request": [recorder]}},
    }
    if api_version is not None:
        options["api_version"] = api_version
    client = genai.Client(
        vertexai=False,
        api_key=api_key or gateway.key,
        http_options=types.HttpOptions(**options),
    )
    return client, recorder


def image_config(aspect_ratio: str, image_size: str | None = None) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        response_modalities=["IMAGE"],
        image_config=types.ImageConfig(aspect_ratio=aspect_ratio, image_size=image_size),
    )


def answer_images(response: types.GenerateContentResponse) -> list[Image.Image]:
    """The PNGs of the answer (not the thinking drafts Pro sends first), opened with Pillow."""
    images = []
    for candidate in response.candidates or []:
        for part in (candidate.content.parts if candidate.content else None) or []:
            if part.inline_data is None or part.thought:
                continue
            data = part.inline_data.data
            assert part.inline_data.mime_type == "image/png", part.inline_data.mime_type
            assert data and data.startswith(PNG_MAGIC), "inline_data is not a PNG"
            image = Image.open(io.BytesIO(data))
            image.load()
            assert image.format == "PNG"
            images.append(image)
    return images


def create_key(cli, name: str, *extra: str) -> str:
    """Create a gateway key with the CLI; its secret is the last stdout line."""
    result = cli("keys", "create", "--name", name, *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().splitlines()[-1]


def raw(gateway: Gateway, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request to the gateway: (status, headers, body)."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(root_url(gateway) + path, method=method, data=data)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def google_error(status: int, body: bytes, code: int, name: str) -> dict:
    """Asserts a Google-style error body; returns its "error" object."""
    assert status == code, (status, body[:500])
    parsed = json.loads(body)
    assert set(parsed) == {"error"}, parsed
    error = parsed["error"]
    assert error["code"] == code and error["status"] == name, error
    assert isinstance(error["message"], str) and error["message"], error
    return error


GENERATE_BODY = {
    "contents": [{"role": "user", "parts": [{"text": "a banana"}]}],
    "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": {"aspectRatio": "16:9"}},
}


# --------------------------------------------------------------------------------------------
# The SDK
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("api_version, expected_version", VERSIONS)
def test_generate_content_16x9(gateway, api_version, expected_version):
    """generate_content on nano-banana, 16:9: one PNG of Google's 16:9 size, tokens counted."""
    client, recorder = make_client(gateway, api_version)

    response = client.models.generate_content(model="nano-banana", contents="a banana", config=image_config("16:9"))

    recorder.assert_version(expected_version)
    assert [path.rsplit("/", 1)[-1] for path in recorder.paths] == ["nano-banana:generateContent"]
    images = answer_images(response)
    assert len(images) == 1, f"expected one image, got {len(images)}"
    assert images[0].size == FLASH_16x9
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    usage = response.usage_metadata
    assert usage is not None
    assert usage.candidates_token_count and usage.candidates_token_count > 0
    assert usage.total_token_count and usage.total_token_count >= usage.candidates_token_count


@pytest.mark.parametrize("api_version, expected_version", VERSIONS)
def test_pro_2k(gateway, api_version, expected_version):
    """nano-banana-pro with image_size 2K and 16:9 answers the 2K size of that ratio."""
    client, recorder = make_client(gateway, api_version)

    response = client.models.generate_content(
        model="nano-banana-pro", contents="a banana", config=image_config("16:9", "2K")
    )

    recorder.assert_version(expected_version)
    images = answer_images(response)
    assert len(images) == 1, f"expected one final image, got {[image.size for image in images]}"
    assert images[0].size == PRO_16x9_2K
    assert response.usage_metadata and response.usage_metadata.candidates_token_count > 0


def test_upstream_id_as_model(gateway):
    """An upstream id works as the model too (gemini-2.5-flash-image, same table size)."""
    client, _ = make_client(gateway, "v1beta")

    response = client.models.generate_content(
        model="gemini-2.5-flash-image", contents="a banana", config=image_config("16:9")
    )

    images = answer_images(response)
    assert [image.size for image in images] == [FLASH_16x9]


@pytest.mark.parametrize("api_version, expected_version", VERSIONS)
def test_generate_content_stream(gateway, api_version, expected_version):
    """generate_content_stream yields chunks, one with the image, the last with usage."""
    client, recorder = make_client(gateway, api_version)

    chunks = list(
        client.models.generate_content_stream(model="nano-banana", contents="a banana", config=image_config("16:9"))
    )

    recorder.assert_version(expected_version)
    assert [path.rsplit("/", 1)[-1] for path in recorder.paths] == ["nano-banana:streamGenerateContent"]
    assert chunks, "the stream yielded nothing"
    images = [image for chunk in chunks for image in answer_images(chunk)]
    assert [image.size for image in images] == [FLASH_16x9]
    last = chunks[-1].usage_metadata
    assert last is not None, "the last chunk carries no usage_metadata"
    assert last.candidates_token_count and last.candidates_token_count > 0


@pytest.mark.parametrize("api_version, expected_version", VERSIONS)
def test_wrong_key_is_401(gateway, api_version, expected_version):
    """A key the gateway does not know: ClientError 401 UNAUTHENTICATED, before any generation."""
    client, recorder = make_client(gateway, api_version, api_key="sk-ng-not-a-real-key-0123456789abcdef")

    with pytest.raises(errors.ClientError) as raised:
        client.models.generate_content(model="nano-banana", contents="a banana", config=image_config("1:1"))

    recorder.assert_version(expected_version)
    assert raised.value.code == 401
    assert raised.value.status == "UNAUTHENTICATED"
    assert raised.value.message


def test_wrong_key_stream_is_401(gateway):
    client, _ = make_client(gateway, "v1beta", api_key="sk-ng-not-a-real-key-0123456789abcdef")

    with pytest.raises(errors.ClientError) as raised:
        list(client.models.generate_content_stream(model="nano-banana", contents="a banana"))

    assert raised.value.code == 401 and raised.value.status == "UNAUTHENTICATED"


@pytest.mark.parametrize("api_version, expected_version", VERSIONS)
def test_unknown_model_is_404(gateway, api_version, expected_version):
    client, recorder = make_client(gateway, api_version)

    with pytest.raises(errors.ClientError) as raised:
        client.models.generate_content(model="no-such-banana", contents="a banana", config=image_config("1:1"))

    recorder.assert_version(expected_version)
    assert raised.value.code == 404
    assert raised.value.status == "NOT_FOUND"


@pytest.mark.parametrize("api_version, expected_version", VERSIONS)
def test_models_list(gateway, api_version, expected_version):
    """models.list() names the gateway's models in Google's shape."""
    client, recorder = make_client(gateway, api_version)

    models = {model.name: model for model in client.models.list()}

    recorder.assert_version(expected_version)
    assert "models/nano-banana" in models, sorted(models)
    assert {"models/nano-banana-pro", "models/nano-banana-2"} <= set(models), sorted(models)
    banana = models["models/nano-banana"]
    assert banana.display_name
    assert {"generateContent", "streamGenerateContent"} <= set(banana.supported_actions or [])


@pytest.mark.parametrize("api_version, expected_version", VERSIONS)
def test_models_get(gateway, api_version, expected_version):
    """models.get() returns one model in Google's shape (under /v1/ too, where the SDK sends
    x-goog-api-key: Gemini's Model, not OpenAI's model object)."""
    client, recorder = make_client(gateway, api_version)

    one = client.models.get(model="nano-banana")

    recorder.assert_version(expected_version)
    assert one.name == "models/nano-banana", one
    assert one.display_name
    assert {"generateContent", "streamGenerateContent"} <= set(one.supported_actions or [])


def test_models_get_unknown_is_404(gateway):
    client, _ = make_client(gateway, "v1beta")

    with pytest.raises(errors.ClientError) as raised:
        client.models.get(model="no-such-banana")

    assert raised.value.code == 404 and raised.value.status == "NOT_FOUND"


def test_usage_recorded(gateway, cli, unique_name):
    """Both calls are billed to the key and logged with the Gemini endpoints."""
    secret = create_key(cli, unique_name, "--credit", "5")
    client, _ = make_client(gateway, "v1beta", api_key=secret)

    client.models.generate_content(model="nano-banana", contents="a banana", config=image_config("16:9"))
    list(client.models.generate_content_stream(model="nano-banana", contents="a banana", config=image_config("16:9")))

    result = cli("usage", "--key", unique_name, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(result.stdout)
    assert sorted(row["endpoint"] for row in rows) == ["gemini.generateContent", "gemini.streamGenerateContent"], rows
    for row in rows:
        assert row["key"] == unique_name, row
        assert row["model"] == "nano-banana" and row["status"] == 200 and row["error_code"] is None, row
        assert row["images"] == 1 and row["output_image_tokens"] == 1290 and row["cost_usd"] > 0, row
        assert row["upstream_model"] == "gemini-2.5-flash-image", row

    shown = cli("keys", "show", unique_name, "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    key = json.loads(shown.stdout)
    assert key["reserved_usd"] == 0
    assert key["spent_usd"] == pytest.approx(sum(row["cost_usd"] for row in rows))
    # Two nano-banana images: 1290 image tokens at $30/1M each, plus a few text tokens.
    assert 2 * 0.0387 <= key["spent_usd"] < 2 * 0.0388, key


def test_insufficient_credit_is_429(gateway, cli, unique_name):
    """A key without enough credit: 429 RESOURCE_EXHAUSTED, nothing spent."""
    secret = create_key(cli, unique_name, "--credit", "0.01")
    client, _ = make_client(gateway, "v1beta", api_key=secret)

    with pytest.raises(errors.ClientError) as raised:
        client.models.generate_content(model="nano-banana", contents="a banana", config=image_config("1:1"))

    assert raised.value.code == 429 and raised.value.status == "RESOURCE_EXHAUSTED"
    key = json.loads(cli("keys", "show", unique_name, "--json").stdout)
    assert key["spent_usd"] == 0 and key["reserved_usd"] == 0


def test_model_not_allowed_is_404(gateway, cli, unique_name):
    """A key limited to nano-banana may not use nano-banana-pro: 404 NOT_FOUND naming the models
    it may use (as the OpenAI routes answer: a key never learns of models it cannot use)."""
    secret = create_key(cli, unique_name, "--models", "nano-banana")
    client, _ = make_client(gateway, "v1beta", api_key=secret)

    with pytest.raises(errors.ClientError) as raised:
        client.models.generate_content(model="nano-banana-pro", contents="a banana", config=image_config("1:1"))

    assert raised.value.code == 404 and raised.value.status == "NOT_FOUND"
    assert "Available models: nano-banana." in (raised.value.message or "")
    # The model it may use still works.
    response = client.models.generate_content(model="nano-banana", contents="a banana", config=image_config("16:9"))
    assert [image.size for image in answer_images(response)] == [FLASH_16x9]


# --------------------------------------------------------------------------------------------
# Plain HTTP: the other ways of passing the key, and the error shapes
# --------------------------------------------------------------------------------------------


def auth(gateway: Gateway, how: str, key: str | None = None) -> tuple[str, dict[str, str]]:
    """(query string, headers) carrying the key the way ``how`` says."""
    key = key or gateway.key
    if how == "header":
        return "", {"x-goog-api-key": key}
    if how == "query":
        return "?key=" + urllib.parse.quote(key), {}
    return "", {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("version", ["v1beta", "v1"])
@pytest.mark.parametrize("how", ["header", "query", "bearer"])
def test_raw_generate_content_key_forms(gateway, version, how):
    query, headers = auth(gateway, how)

    status, _, body = raw(gateway, "POST", f"/{version}/models/nano-banana:generateContent{query}", GENERATE_BODY, headers)

    assert status == 200, body[:500]
    answer = json.loads(body)
    parts = answer["candidates"][0]["content"]["parts"]
    images = [part["inlineData"] for part in parts if "inlineData" in part and not part.get("thought")]
    assert len(images) == 1 and images[0]["mimeType"] == "image/png"
    assert answer["usageMetadata"]["candidatesTokenCount"] > 0


@pytest.mark.parametrize("how", ["header", "query", "bearer"])
def test_raw_wrong_key_is_google_401(gateway, how):
    query, headers = auth(gateway, how, key="sk-ng-not-a-real-key-0123456789abcdef")

    status, _, body = raw(gateway, "POST", f"/v1beta/models/nano-banana:generateContent{query}", GENERATE_BODY, headers)

    google_error(status, body, 401, "UNAUTHENTICATED")


def test_raw_no_key_is_google_401(gateway):
    status, _, body = raw(gateway, "POST", "/v1beta/models/nano-banana:generateContent", GENERATE_BODY)

    google_error(status, body, 401, "UNAUTHENTICATED")


def test_raw_stream_is_sse(gateway):
    """:streamGenerateContent?alt=sse answers text/event-stream, ``data: {json}`` events."""
    status, headers, body = raw(
        gateway, "POST", "/v1beta/models/nano-banana:streamGenerateContent?alt=sse", GENERATE_BODY,
        {"x-goog-api-key": gateway.key},
    )

    assert status == 200, body[:500]
    content_type = {name.lower(): value for name, value in headers.items()}.get("content-type", "")
    assert content_type.startswith("text/event-stream"), content_type
    events = [json.loads(line[len("data:"):]) for line in body.decode().splitlines() if line.startswith("data:")]
    assert events, body[:500]
    images = [
        part for event in events for candidate in event.get("candidates", [])
        for part in candidate.get("content", {}).get("parts", []) if "inlineData" in part and not part.get("thought")
    ]
    assert len(images) == 1
    assert events[-1]["usageMetadata"]["candidatesTokenCount"] > 0


@pytest.mark.parametrize("body", [b"{not json", {"contents": "not a list"}, {"contents": []}], ids=["not-json", "bad-contents", "no-contents"])
def test_raw_bad_body_is_google_400(gateway, body):
    status, _, answer = raw(gateway, "POST", "/v1beta/models/nano-banana:generateContent", body, {"x-goog-api-key": gateway.key})

    google_error(status, answer, 400, "INVALID_ARGUMENT")


def test_raw_unknown_model_is_google_404(gateway):
    status, _, body = raw(
        gateway, "POST", "/v1beta/models/no-such-banana:generateContent", GENERATE_BODY, {"x-goog-api-key": gateway.key}
    )

    google_error(status, body, 404, "NOT_FOUND")


@pytest.mark.parametrize("path, headers", [
    ("/v1beta/models?key={key}", {}),
    ("/v1beta/models", {"x-goog-api-key": "{key}"}),
    ("/v1/models", {"x-goog-api-key": "{key}"}),
], ids=["v1beta-query-key", "v1beta-header", "v1-header"])
def test_raw_models_list(gateway, path, headers):
    """The Gemini model list, Google's shape (``/v1/models`` with x-goog-api-key is Gemini's, not OpenAI's)."""
    status, _, body = raw(
        gateway, "GET", path.format(key=urllib.parse.quote(gateway.key)),
        headers={name: value.format(key=gateway.key) for name, value in headers.items()},
    )

    assert status == 200, body[:500]
    listed = json.loads(body)
    assert "models" in listed and "data" not in listed, "an OpenAI list, not Gemini's"
    by_name = {model["name"]: model for model in listed["models"]}
    banana = by_name.get("models/nano-banana")
    assert banana is not None, sorted(by_name)
    assert banana["displayName"]
    assert {"generateContent", "streamGenerateContent"} <= set(banana["supportedGenerationMethods"])


@pytest.mark.parametrize("version", ["v1beta", "v1"])
def test_raw_model_get(gateway, version):
    status, _, body = raw(gateway, "GET", f"/{version}/models/nano-banana-pro", headers={"x-goog-api-key": gateway.key})

    assert status == 200, body[:500]
    model = json.loads(body)
    assert model["name"] == "models/nano-banana-pro"
    assert "generateContent" in model["supportedGenerationMethods"]
