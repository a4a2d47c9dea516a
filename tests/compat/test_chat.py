"""The official ``openai`` SDK against NanoGate's /v1/chat/completions (images in chat)."""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.request
import uuid

import openai
import pytest

from test_cli import create_key
from test_openai_sdk import FLASH_TOKENS, PRO_4K_TOKENS, PRO_TOKENS, fetch_url, png_size

PROMPT = "draw a banana on the moon"
MARKDOWN_IMAGE = re.compile(r"!\[image\]\(([^)\s]+)\)")
DATA_URL_PREFIX = "data:image/png;base64,"

# Input image tokens the emulator reports per image for the Gemini 3 Pro family.
PRO_INPUT_TOKENS = 560


def image_from_url(url: str, base_url: str) -> bytes:
    """PNG bytes behind an image URL of a reply: a ``data:`` URL or a signed gateway URL."""
    if url.startswith("data:"):
        assert url.startswith(DATA_URL_PREFIX), url[:40]
        return base64.b64decode(url[len(DATA_URL_PREFIX):], validate=True)
    return fetch_url(url, base_url)


def extras(model) -> dict:
    """A response object as a plain dict, extra (non-OpenAI) fields included."""
    return model.to_dict()


def markdown_urls(content: str) -> list[str]:
    """The URLs of the ``![image](url)`` links in a message."""
    return MARKDOWN_IMAGE.findall(content)


def check_chat_usage(usage, image_tokens: int) -> dict:
    """Usage adds up and reports the expected output image tokens; returns it as a dict."""
    assert usage is not None, "response has no usage"
    raw = usage.model_dump()
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    details = raw.get("completion_tokens_details") or {}
    assert details.get("image_tokens") == image_tokens, raw
    assert usage.completion_tokens >= image_tokens
    return raw


def test_non_streamed_reply(client, gateway):
    """Without ``modalities`` the image is Markdown in content (what chat views render) and the
    same image in message.images (what LobeChat's image generation reads); with ``modalities:
    ["image", "text"]`` it is in message.images only."""
    completion = client.chat.completions.create(
        model="nano-banana", messages=[{"role": "user", "content": PROMPT}]
    )

    assert isinstance(completion, openai.types.chat.ChatCompletion)
    assert completion.object == "chat.completion"
    assert completion.model == "nano-banana"
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    message = choice.message
    assert message.role == "assistant"
    urls = markdown_urls(message.content)
    assert len(urls) == 1, message.content
    assert [image["image_url"]["url"] for image in (message.model_extra or {})["images"]] == urls, "the same image, not another"
    assert png_size(fetch_url(urls[0], gateway.base_url)) == (1024, 1024)
    check_chat_usage(completion.usage, FLASH_TOKENS)

    asked = client.chat.completions.create(
        model="nano-banana", messages=[{"role": "user", "content": PROMPT}], extra_body={"modalities": ["image", "text"]}
    )
    message = asked.choices[0].message
    images = message.model_extra["images"]
    assert images == extras(message)["images"]
    assert len(images) == 1
    assert images[0]["type"] == "image_url"
    assert markdown_urls(message.content or "") == [], message.content
    assert png_size(fetch_url(images[0]["image_url"]["url"], gateway.base_url)) == (1024, 1024)


def stream_chat(client, **kwargs) -> list:
    """All chunks of a streamed completion, read by the SDK's own SSE parser."""
    stream = client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    assert isinstance(stream, openai.Stream)
    with stream:
        return list(stream)


def check_stream(chunks: list, images_field: bool = False) -> tuple[str, str]:
    """The shape every streamed reply has; returns (content, image URL). The image comes once:
    in delta.images when the request named ``modalities``, else as Markdown in the content."""
    assert chunks, "empty stream"
    for chunk in chunks:
        assert isinstance(chunk, openai.types.chat.ChatCompletionChunk)
        assert chunk.object == "chat.completion.chunk"
    assert len({chunk.id for chunk in chunks}) == 1, "chunks of one reply carry different ids"

    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [chunk for chunk in chunks if chunk.choices]
    content = "".join(chunk.choices[0].delta.content or "" for chunk in with_choices)
    assert [chunk.choices[0].finish_reason for chunk in with_choices if chunk.choices[0].finish_reason] == ["stop"]

    image_chunks = [chunk for chunk in with_choices if (chunk.choices[0].delta.model_extra or {}).get("images")]
    if images_field:
        assert len(image_chunks) == 1, f"{len(image_chunks)} chunks carry delta.images"
        images = image_chunks[0].choices[0].delta.model_extra["images"]
        assert len(images) == 1 and images[0]["type"] == "image_url"
        url = images[0]["image_url"]["url"]
        assert markdown_urls(content) == [], "the image must not come twice"
    else:
        assert image_chunks == [], "the image must not come twice"
        urls = markdown_urls(content)
        assert len(urls) == 1, content[:200]
        url = urls[0]

    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    return content, url


def own_row(gateway, request_id: str) -> dict:
    """The demo key's usage row of a request, once written (a stream settles as it ends)."""
    deadline = time.monotonic() + 30
    while True:
        request = urllib.request.Request(f"{gateway.base_url}/usage", headers={"Authorization": f"Bearer {gateway.key}"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            rows = [row for row in json.loads(answer.read())["data"] if row["request_id"] == request_id]
        if rows:
            return rows[0]
        assert time.monotonic() < deadline, f"no usage row for {request_id}"
        time.sleep(0.2)


def test_streamed_reply_with_url(client, gateway):
    """Streamed nano-banana-pro at 2K 16:9 (OpenRouter's image_config) gives a URL to a 2752x1536
    PNG; the usage row counts the image its Markdown delivered."""
    request_id = f"stream-{uuid.uuid4().hex}"
    chunks = stream_chat(
        client,
        model="nano-banana-pro",
        messages=[{"role": "user", "content": PROMPT}],
        extra_body={"image_config": {"aspect_ratio": "16:9", "image_size": "2K"}},
        extra_headers={"x-request-id": request_id},
    )

    _, url = check_stream(chunks)
    assert not url.startswith("data:")
    assert png_size(fetch_url(url, gateway.base_url)) == (2752, 1536)
    check_chat_usage(chunks[-1].usage, PRO_TOKENS)
    row = own_row(gateway, request_id)
    assert row["images"] == 1 and row["status"] == 200, row


def test_streamed_reply_with_4k_data_url(cli, make_client, gateway, unique_name):
    """A gemini-group key gets the whole 4K image as one data: URL in a single SSE event."""
    client = make_client(create_key(cli, unique_name, group="gemini"))

    chunks = stream_chat(
        client,
        model="nano-banana-pro-4k",
        messages=[{"role": "user", "content": PROMPT}],
        extra_body={"image_config": {"aspect_ratio": "1:1"}, "modalities": ["image", "text"]},
    )

    _, url = check_stream(chunks, images_field=True)
    assert url.startswith(DATA_URL_PREFIX), url[:40]
    data = image_from_url(url, gateway.base_url)
    assert len(data) > 20 * 1024 * 1024, len(data)
    assert png_size(data) == (4096, 4096)
    check_chat_usage(chunks[-1].usage, PRO_4K_TOKENS)


@pytest.mark.parametrize(
    "model, extra_body, data_urls",
    [
        pytest.param("gemini-3-pro-image-preview", {"response_format": "url"}, True, id="gemini-3-pro-image-preview"),
        pytest.param("nano-banana-pro", {}, False, id="nano-banana-pro"),
    ],
)
def test_multi_turn_editing(client, gateway, model, extra_body, data_urls):
    """Three turns, each sending back the whole history as plain assistant content.

    Gemini 3 rejects model turns without their thought signatures; the gateway keeps them
    server-side, so a client that only echoes content must still succeed on every turn.
    """
    messages: list[dict] = []
    requests = [PROMPT, "now make the banana blue", "add a small flag next to it"]
    for turn, text in enumerate(requests):
        messages.append({"role": "user", "content": text})
        completion = client.chat.completions.create(model=model, messages=messages, extra_body=extra_body)

        choice = completion.choices[0]
        assert choice.finish_reason == "stop", f"turn {turn + 1}: {choice}"
        content = choice.message.content
        urls = markdown_urls(content)
        assert len(urls) == 1, f"turn {turn + 1}: {content[:200]}"
        if data_urls:
            assert urls[0].startswith(DATA_URL_PREFIX), urls[0][:40]
        else:
            assert urls[0].startswith(gateway.base_url.removesuffix("/v1") + "/v1/files/images/"), urls[0]
        assert png_size(image_from_url(urls[0], gateway.base_url)) == (1024, 1024)
        # Every earlier assistant image went back to Gemini as an input image.
        usage = check_chat_usage(completion.usage, PRO_TOKENS)
        assert usage["prompt_tokens_details"]["image_tokens"] == turn * PRO_INPUT_TOKENS, usage

        messages.append({"role": "assistant", "content": content})


def test_image_safety_is_content_filter(client):
    """Gemini's IMAGE_SAFETY finish becomes finish_reason content_filter with a refusal."""
    completion = client.chat.completions.create(
        model="nano-banana", messages=[{"role": "user", "content": f"{PROMPT} [emulate:image_safety]"}]
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "content_filter"
    assert choice.message.refusal and "IMAGE_SAFETY" in choice.message.refusal
    assert not (choice.message.model_extra or {}).get("images")


def rate_limited(client) -> openai.RateLimitError:
    """Send a chat request the emulator answers with Google's 429 (retryDelay 27s)."""
    with pytest.raises(openai.RateLimitError) as excinfo:
        client.chat.completions.create(
            model="nano-banana", messages=[{"role": "user", "content": f"{PROMPT} [emulate:429]"}]
        )
    return excinfo.value


# These two run on a private gateway: after a 429 its only (demo) Google key cools down for
# Google's retryDelay, which would fail every later test on the shared gateway.


def test_upstream_rate_limit(fresh_client):
    """Google's 429 becomes RateLimitError with Retry-After from Google's retryDelay."""
    error = rate_limited(fresh_client)

    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert error.response.headers.get("retry-after") == "27"


def test_rate_limited_pool_keeps_answering_429(fresh_client):
    """While the only Google key cools down, requests get 429 + Retry-After (README: "Google rate
    limit on every key → 429 + Retry-After, rate_limit_exceeded"), not an error about configuration."""
    rate_limited(fresh_client)

    with pytest.raises(openai.APIStatusError) as excinfo:
        fresh_client.chat.completions.create(model="nano-banana", messages=[{"role": "user", "content": PROMPT}])

    error = excinfo.value
    assert error.status_code == 429, f"{error.status_code}: {error.body}"
    assert isinstance(error, openai.RateLimitError)
    assert error.code == "rate_limit_exceeded"
    retry_after = error.response.headers.get("retry-after")
    assert retry_after is not None and 1 <= int(retry_after) <= 27, retry_after


def test_n_above_one_is_bad_request(client):
    """Gemini answers one choice: n=2 raises BadRequestError about ``n``."""
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(
            model="nano-banana", messages=[{"role": "user", "content": PROMPT}], n=2
        )

    assert excinfo.value.status_code == 400
    assert excinfo.value.param == "n"


def test_a_client_leaving_a_stream_before_the_image_pays_nothing(cli, gateway, unique_name):
    """Gone after the first chunk while Google still works: the row says 499 and nothing is
    charged, though the reply's text may have been written before the image."""
    key = create_key(cli, unique_name)
    request_id = f"chat-leave-{unique_name}"
    request = urllib.request.Request(
        f"{gateway.base_url}/chat/completions", method="POST",
        data=json.dumps({"model": "nano-banana", "stream": True, "messages": [{"role": "user", "content": "a banana [emulate:slow=3000]"}]}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", "x-request-id": request_id},
    )
    answer = urllib.request.urlopen(request, timeout=120)
    try:
        for raw in answer:
            if raw.startswith(b"data:"):
                break  # the role chunk
    finally:
        answer.fp.raw._sock.close()  # hang up now, mid-stream
        answer.close()

    deadline = time.monotonic() + 30
    while True:
        usage_request = urllib.request.Request(f"{gateway.base_url}/usage", headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(usage_request, timeout=30) as usage:
            account = json.loads(usage.read())
        rows = [row for row in account["data"] if row["request_id"] == request_id]
        if rows:
            break
        assert time.monotonic() < deadline, "no usage row"
        time.sleep(0.2)
    assert rows[0]["status"] == 499 and rows[0]["cost_usd"] == 0, rows[0]
    assert account["key"]["spent_usd"] == 0
