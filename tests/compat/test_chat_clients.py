"""Replays of real chat clients against /v1/chat/completions, read the way each client reads
the answer: where the image shows up (Markdown in ``content`` or ``images``), that it shows
up exactly once, and what happens to the images of earlier turns the client sends back.

Each replay names the client source it follows. The client code itself is not run; the
small ``*_view`` functions below do what the named code does with a reply.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request

import openai
import pytest

from conftest import sdk_client
from test_catalog import decode, fetch
from test_cli import create_key

PROMPT = "draw a banana on the moon"
FOLLOW_UP = "now make the banana blue"
MODALITIES = {"modalities": ["image", "text"]}

# Open WebUI's MARKDOWN_IMAGE_URL_PATTERN (backend/open_webui/utils/files.py).
MARKDOWN_IMAGE = re.compile(r"!\[(.*?)\]\((.+?)\)")
# LobeChat's processMarkdownBase64Images (packages/model-runtime/src/core/streams/openai/openai.ts).
MARKDOWN_DATA_IMAGE = re.compile(r"!\[[^\]]*]\(\s*(data:image\/[\d+.A-Za-z-]+;base64,[^\s)]+)\s*\)")

# Input image tokens the emulator bills per image sent to Gemini.
FLASH25_INPUT_TOKENS = 258
PRO_INPUT_TOKENS = 560

OPEN_WEBUI_FILE_URL = "/api/v1/files/abc/content"


# ---------------------------------------------------------------------------------------------
# Helpers


def image_at(url: str, base_url: str) -> bytes:
    """The bytes behind an image URL of a reply: a ``data:`` URL or a signed gateway URL."""
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        assert header.startswith("data:image/") and header.endswith(";base64"), header[:60]
        return base64.b64decode(payload, validate=True)
    data, _ = fetch(url, base_url)
    return data


def check_one_image(urls: list[str], base_url: str, size: tuple[int, int] = (1024, 1024)) -> None:
    """Exactly one image, and it is a real picture of ``size``."""
    assert len(urls) == 1, urls
    _, pixels = decode(image_at(urls[0], base_url))
    assert pixels == size


def post_chat(gateway, body: dict, key: str | None = None, headers: dict | None = None):
    """POST a chat body as JSON the way a client's own HTTP code does.

    Returns (status, response headers, payload): the decoded JSON for a non-streamed answer or
    an error, the list of decoded ``data:`` chunks for a stream.
    """
    request = urllib.request.Request(
        f"{gateway.base_url}/chat/completions", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {key or gateway.key}", "Content-Type": "application/json", **(headers or {})},
    )
    try:
        response = urllib.request.urlopen(request, timeout=180)
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read() or b"{}")
    with response:
        if response.headers.get_content_type() != "text/event-stream":
            return response.status, response.headers, json.loads(response.read())
        chunks = []
        for raw in response:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue  # blank separators, `: keep-alive` comments
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                break
            chunks.append(json.loads(data))
        return response.status, response.headers, chunks


def stream_usage(chunks: list[dict]) -> dict:
    """The usage of a stream (the include_usage chunk)."""
    usages = [chunk["usage"] for chunk in chunks if chunk.get("usage")]
    assert usages, "no usage chunk in the stream"
    return usages[-1]


def prompt_image_tokens(usage) -> int:
    """Input image tokens of a chat usage (SDK object or plain dict)."""
    raw = usage if isinstance(usage, dict) else usage.model_dump()
    return (raw.get("prompt_tokens_details") or {}).get("image_tokens", 0)


def message_images(message) -> list[str]:
    """URLs in ``message.images`` (SDK object or plain dict)."""
    raw = message if isinstance(message, dict) else message.model_dump()
    return [entry["image_url"]["url"] for entry in raw.get("images") or []]


def markdown_urls(content: str | None) -> list[str]:
    """URLs of the Markdown images in a message's content."""
    return [url for _, url in MARKDOWN_IMAGE.findall(content or "")]


def sdk_stream(client, **kwargs) -> list:
    """All chunks of a streamed completion, read by the SDK."""
    with client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs) as stream:
        return list(stream)


# ---------------------------------------------------------------------------------------------
# Open WebUI


def open_webui_view(chunks: list[dict]) -> tuple[str, list[str]]:
    """What Open WebUI keeps of a streamed reply (backend/open_webui/utils/middleware.py,
    stream_body_handler): the concatenated ``delta.content`` (rendered as Markdown) and every
    ``delta.images`` entry of type image_url (get_image_urls, attached as message files)."""
    content, files = "", []
    for chunk in chunks:
        choices = chunk.get("choices") or []
        if not choices:
            continue
        delta = choices[0].get("delta") or {}
        for image in delta.get("images") or []:
            if isinstance(image, dict) and image.get("type") == "image_url" and image.get("image_url", {}).get("url"):
                files.append(image["image_url"]["url"])
        if isinstance(delta.get("content"), str):
            content += delta["content"]
    return content, files


# Open WebUI forwards a chat to an OpenAI connection as {"model", "messages", "stream": true}
# and adds stream_options.include_usage to streams (backend/open_webui/routers/openai.py,
# generate_chat_completion); it never sends `modalities` (src/lib/components/chat/Chat.svelte,
# sendPromptSocket, builds the body without it).
def test_open_webui_stream_shows_each_image_once(gateway):
    """Open WebUI shows Markdown images and uploads delta.images as files: the image must be
    in exactly one of the two (here Markdown, as the request has no modalities)."""
    body = {
        "model": "nano-banana",
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    status, _, chunks = post_chat(gateway, body)

    assert status == 200, chunks
    content, files = open_webui_view(chunks)
    shown = markdown_urls(content) + files
    check_one_image(shown, gateway.base_url)
    assert files == [], "no modalities: images belong in the Markdown only"
    assert stream_usage(chunks)["completion_tokens"] > 0


# Open WebUI stores reply images as its own files and writes `![..](/api/v1/files/<id>/content)`
# (a path on the Open WebUI server, not on the gateway) into the history: upload_image returns
# request.app.url_path_for("get_file_content_by_id") (backend/open_webui/routers/images.py), used
# by convert_markdown_base64_images (ENABLE_CHAT_RESPONSE_BASE64_IMAGE_URL_CONVERSION,
# backend/open_webui/utils/files.py) and by get_image_urls for delta.images. The next turn sends
# that history back as the assistant message's content string (Chat.svelte, sendPromptSocket).
@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "not-streamed"])
def test_open_webui_follow_up_drops_its_own_file_url(gateway, stream):
    """The unresolvable assistant image is dropped, the header counts it, and the turn succeeds
    without billing it as an input image."""
    body = {
        "model": "nano-banana",
        "messages": [
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": f"Here is your image.\n\n![image]({OPEN_WEBUI_FILE_URL})"},
            {"role": "user", "content": FOLLOW_UP},
        ],
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}

    status, headers, payload = post_chat(gateway, body)

    assert status == 200, payload
    assert headers.get("X-NanoGate-Dropped-Images") == "1"
    if stream:
        content, files = open_webui_view(payload)
        usage = stream_usage(payload)
    else:
        # Open WebUI reads a non-streamed answer's content; `images` carries the same image.
        message = payload["choices"][0]["message"]
        content, files, usage = message["content"], [], payload["usage"]
        assert message_images(message) == markdown_urls(content)
    check_one_image(markdown_urls(content) + files, gateway.base_url)
    assert prompt_image_tokens(usage) == 0


def test_unresolvable_assistant_images_are_all_counted(gateway):
    """Two assistant images that cannot be fetched (Open WebUI's file path and a gateway URL
    whose signature no longer holds, as in a conversation reopened after the URL expired) are
    both dropped and counted."""
    expired = f"{gateway.base_url}/files/images/expired.png?expires=1&signature=00"
    body = {
        "model": "nano-banana",
        "messages": [
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": f"![image]({OPEN_WEBUI_FILE_URL})\n\n![image]({expired})"},
            {"role": "user", "content": FOLLOW_UP},
        ],
    }

    status, headers, payload = post_chat(gateway, body)

    assert status == 200, payload
    assert headers.get("X-NanoGate-Dropped-Images") == "2"
    assert prompt_image_tokens(payload["usage"]) == 0


# The same Open WebUI file path as an image the *user* attached (Chat.svelte sends a user
# message's image files as image_url parts with file.url).
def test_open_webui_file_url_in_user_turn_is_bad_request(client):
    """An image the user sent that cannot be fetched is the user's input: a 400, not a drop."""
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(
            model="nano-banana",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": FOLLOW_UP},
                        {"type": "image_url", "image_url": {"url": OPEN_WEBUI_FILE_URL}},
                    ],
                }
            ],
        )

    assert excinfo.value.status_code == 400
    assert (excinfo.value.param or "").startswith("messages"), excinfo.value.param


# ---------------------------------------------------------------------------------------------
# OpenRouter-style clients (modalities)


# OpenRouter's image generation docs (openrouter.ai/docs/features/multimodal/image-generation)
# have clients send modalities ["image", "text"] and read message.images (delta.images when
# streamed); the OpenAI SDK passes it in extra_body, as those docs show.
@pytest.mark.parametrize("stream", [False, True], ids=["not-streamed", "streamed"])
def test_openrouter_modalities_images_only_in_images(client, gateway, stream):
    """With ``modalities`` the image comes only in ``images``; ``content`` is text without Markdown images."""
    kwargs = dict(model="nano-banana", messages=[{"role": "user", "content": PROMPT}], extra_body=MODALITIES)

    if stream:
        chunks = sdk_stream(client, **kwargs)
        content = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        urls = [url for chunk in chunks if chunk.choices for url in message_images(chunk.choices[0].delta)]
    else:
        message = client.chat.completions.create(**kwargs).choices[0].message
        content, urls = message.content, message_images(message)

    assert "![" not in (content or "")
    check_one_image(urls, gateway.base_url)


# The OpenAI SDK's own multi-turn idiom: messages.append(resp.choices[0].message.model_dump())
# sends the whole assistant message back, extra `images` field included.
@pytest.mark.parametrize("model, per_image", [("nano-banana", FLASH25_INPUT_TOKENS), ("nano-banana-pro", PRO_INPUT_TOKENS)])
def test_sdk_model_dump_replay_sends_the_image_once(client, model, per_image):
    """The replayed assistant image reaches Gemini once: the same input image tokens as a turn
    that sends it once as Markdown."""
    first_turn = [{"role": "user", "content": PROMPT}]
    first = client.chat.completions.create(model=model, messages=first_turn, extra_body=MODALITIES)
    message = first.choices[0].message
    (url,) = message_images(message)

    replayed = client.chat.completions.create(
        model=model, messages=first_turn + [message.model_dump(), {"role": "user", "content": FOLLOW_UP}], extra_body=MODALITIES
    )
    once = client.chat.completions.create(
        model=model,
        messages=first_turn + [{"role": "assistant", "content": f"![image]({url})"}, {"role": "user", "content": FOLLOW_UP}],
        extra_body=MODALITIES,
    )

    assert replayed.choices[0].finish_reason == "stop"
    assert prompt_image_tokens(once.usage) == per_image
    assert prompt_image_tokens(replayed.usage) == prompt_image_tokens(once.usage)


def test_same_image_in_images_and_markdown_is_sent_once(client):
    """An assistant message carrying its image both in ``images`` and as Markdown (what a
    gateway answering both ways hands out) sends that image upstream once."""
    first_turn = [{"role": "user", "content": PROMPT}]
    content = client.chat.completions.create(model="nano-banana", messages=first_turn).choices[0].message.content
    (url,) = markdown_urls(content)
    assistant = {"role": "assistant", "content": content, "images": [{"type": "image_url", "image_url": {"url": url}}]}

    second = client.chat.completions.create(
        model="nano-banana", messages=first_turn + [assistant, {"role": "user", "content": FOLLOW_UP}]
    )

    assert prompt_image_tokens(second.usage) == FLASH25_INPUT_TOKENS


def placement(message, base_url: str) -> str:
    """Where a reply put its one image: ``markdown``, ``images`` or ``both`` (the same URL)."""
    in_markdown, in_images = markdown_urls(message.content), message_images(message)
    if in_markdown and in_images:
        assert in_markdown == in_images, (in_markdown, in_images)
        check_one_image(in_images, base_url)
        return "both"
    check_one_image(in_markdown + in_images, base_url)
    return "markdown" if in_markdown else "images"


@pytest.mark.parametrize(
    "setting, without_modalities, with_modalities",
    [("auto", "both", "images"), ("markdown", "markdown", "markdown"), ("images", "images", "images"), ("both", "both", "both")],
)
def test_chat_images_setting(private_gateway, setting, without_modalities, with_modalities):
    """``NANOGATE_CHAT_IMAGES`` decides where reply images go, with and without ``modalities``;
    under ``both`` an SDK replay of the reply still sends its image upstream once."""
    gateway = private_gateway(env={"NANOGATE_CHAT_IMAGES": setting})
    client = sdk_client(gateway)
    first_turn = [{"role": "user", "content": PROMPT}]

    plain = client.chat.completions.create(model="nano-banana", messages=first_turn).choices[0].message
    asked = client.chat.completions.create(model="nano-banana", messages=first_turn, extra_body=MODALITIES).choices[0].message

    assert placement(plain, gateway.base_url) == without_modalities
    assert placement(asked, gateway.base_url) == with_modalities
    if setting == "both":
        replayed = client.chat.completions.create(
            model="nano-banana", messages=first_turn + [asked.model_dump(), {"role": "user", "content": FOLLOW_UP}]
        )
        assert prompt_image_tokens(replayed.usage) == FLASH25_INPUT_TOKENS


# ---------------------------------------------------------------------------------------------
# LobeChat


def lobechat_view(chunks: list[dict]) -> tuple[str, list[str]]:
    """What LobeChat shows of a stream (packages/model-runtime/src/core/streams/openai/openai.ts,
    transformOpenAIStream): a chunk with ``delta.images`` becomes images *and its text is
    dropped*; ``![](data:image/...;base64,...)`` in content is lifted out as an image; other
    Markdown images stay in the text and render there."""
    text, images = "", []
    for chunk in chunks:
        choices = chunk.get("choices") or []
        if not choices:
            continue
        delta = choices[0].get("delta") or {}
        if isinstance(delta.get("images"), list) and delta["images"]:
            images += [image.get("image_url", {}).get("url") or image.get("url") for image in delta["images"]]
            continue
        if isinstance(delta.get("content"), str):
            images += MARKDOWN_DATA_IMAGE.findall(delta["content"])
            text += MARKDOWN_DATA_IMAGE.sub("", delta["content"])
    return text, images + markdown_urls(text)


# LobeChat's OpenAI-compatible runtime (packages/model-runtime/src/core/openaiCompatibleFactory/index.ts,
# chat()) streams by default with stream_options.include_usage, sends `user` and an
# `Accept: */*` header, and no modalities; its message converter
# (packages/model-runtime/src/core/contextBuilders/openai.ts) keeps only role and content.
@pytest.mark.parametrize("group", ["default", "gemini"])
def test_lobechat_stream_shows_each_image_once(cli, gateway, unique_name, group):
    """Read as LobeChat reads it, the reply shows one image and keeps its text, whether the
    image is a gateway URL (default key) or a data: URL (gemini key, lifted out by LobeChat)."""
    key = gateway.key if group == "default" else create_key(cli, unique_name, group="gemini")
    body = {
        "model": "nano-banana",
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "lobe-user-1",
    }

    status, _, chunks = post_chat(gateway, body, key=key, headers={"Accept": "*/*"})

    assert status == 200, chunks
    text, images = lobechat_view(chunks)
    check_one_image(images, gateway.base_url)
    assert MARKDOWN_IMAGE.sub("", text).strip(), "the reply's text was lost"
    if group == "gemini":
        assert images[0].startswith("data:image/")


def lobechat_non_streamed_view(payload: dict) -> tuple[str, list[str]]:
    """What LobeChat's chat shows of a non-streamed answer: transformResponseToStream
    (packages/model-runtime/src/core/openaiCompatibleFactory/nonStreamToStream.ts) makes one chunk
    of ``message.content``, role and tool calls (``message.images`` is not carried over), which is
    then read as a stream."""
    chunks = [{"choices": [{"delta": {"content": choice["message"].get("content"), "role": choice["message"].get("role")}} for choice in payload["choices"]]}]
    return lobechat_view(chunks)


def lobechat_generated_image(payload: dict) -> str:
    """LobeChat's image generation by chat model (generateByChatModel in
    packages/model-runtime/src/core/openaiCompatibleFactory/createImage.ts): the picture is
    ``message.images[0].image_url.url`` and nothing else; without it LobeChat fails with
    "No image generated in chat completion response"."""
    message = payload["choices"][0]["message"]
    images = message.get("images")
    if isinstance(images, list) and images and (images[0].get("image_url") or {}).get("url"):
        return images[0]["image_url"]["url"]
    raise AssertionError(f"LobeChat: No image generated in chat completion response: {message}")


# LobeChat turns a non-streamed answer into a stream from message.content alone: without
# modalities the image must be in the content, once.
def test_lobechat_non_streamed_chat_shows_the_image_once(gateway):
    """A non-streamed reply read by LobeChat's chat view shows one image and its text."""
    body = {"model": "nano-banana", "messages": [{"role": "user", "content": PROMPT}], "stream": False, "user": "lobe-user-1"}

    status, _, payload = post_chat(gateway, body, headers={"Accept": "*/*"})

    assert status == 200, payload
    text, images = lobechat_non_streamed_view(payload)
    check_one_image(images, gateway.base_url)
    assert MARKDOWN_IMAGE.sub("", text).strip(), "the reply's text was lost"


# LobeChat's "image generation by chat model" (a model id ending in ':image', the suffix removed
# before sending) posts {model, messages: [{content: [{text, type: 'text'}, image_url…], role:
# 'user'}], stream: false}: no modalities, no stream_options. The reference image, if any, goes
# as a data: URL (processImageUrlForChat).
@pytest.mark.parametrize("group", ["default", "gemini"])
def test_lobechat_generate_by_chat_model(cli, gateway, unique_name, group):
    """LobeChat's image generation through a chat model gets its picture from message.images,
    for a new image and for an edit of it."""
    key = gateway.key if group == "default" else create_key(cli, unique_name, group="gemini")
    body = {"messages": [{"content": [{"text": PROMPT, "type": "text"}], "role": "user"}], "model": "nano-banana", "stream": False}

    status, _, payload = post_chat(gateway, body, key=key)

    assert status == 200, payload
    url = lobechat_generated_image(payload)
    check_one_image([url], gateway.base_url)
    if group == "gemini":
        assert url.startswith("data:image/png;base64,"), url[:40]

    reference = "data:image/png;base64," + base64.b64encode(image_at(url, gateway.base_url)).decode()
    edit = {"messages": [{"content": [{"text": FOLLOW_UP, "type": "text"}, {"image_url": {"url": reference}, "type": "image_url"}], "role": "user"}], "model": "nano-banana", "stream": False}
    status, _, edited = post_chat(gateway, edit, key=key)

    assert status == 200, edited
    check_one_image([lobechat_generated_image(edited)], gateway.base_url)
    assert prompt_image_tokens(edited["usage"]) == FLASH25_INPUT_TOKENS


# ---------------------------------------------------------------------------------------------
# Cherry Studio


def cherry_view(chunks: list[dict]) -> tuple[str, list[str]]:
    """What Cherry Studio shows of a stream (src/renderer/src/aiCore/legacy/clients/openai/OpenAIApiClient.ts,
    getResponseChunkTransformer): content as Markdown text, and every ``delta.images`` (or
    ``message.images``) entry as a generated-image block."""
    text, blocks = "", []
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            source = choice.get("delta") or choice.get("message") or {}
            if isinstance(source.get("content"), str):
                text += source["content"]
            if isinstance(source.get("images"), list):
                blocks += [(image.get("image_url") or {}).get("url", "") for image in source["images"]]
    return text, blocks


# Cherry Studio's OpenAI client (OpenAIApiClient.ts, getRequestTransformer) adds
# modalities ["image", "text"] only for its OpenRouter provider with image generation on; a
# NanoGate set up as an OpenAI-compatible provider gets none, with temperature and
# stream_options.include_usage.
def test_cherry_studio_stream_shows_each_image_once(gateway):
    """Read as Cherry Studio reads it, the reply shows exactly one image."""
    body = {
        "model": "nano-banana",
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0.7,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    status, _, chunks = post_chat(gateway, body)

    assert status == 200, chunks
    text, blocks = cherry_view(chunks)
    check_one_image(markdown_urls(text) + blocks, gateway.base_url)


# With streaming off, Cherry Studio reads choices[].message through the same transformer: content
# as text and every message.images entry as an image block, so it would show an image in both
# twice. Its API clients send the app headers X-Title: Cherry Studio and HTTP-Referer:
# https://cherry-ai.com (BaseApiClient.defaultHeaders), by which the gateway knows it.
def test_cherry_studio_non_streamed_shows_each_image_once(gateway):
    """Read as Cherry Studio reads a non-streamed answer, the reply shows exactly one image."""
    body = {"model": "nano-banana", "messages": [{"role": "user", "content": PROMPT}], "temperature": 0.7, "stream": False}
    headers = {"X-Title": "Cherry Studio", "HTTP-Referer": "https://cherry-ai.com"}

    status, _, payload = post_chat(gateway, body, headers=headers)

    assert status == 200, payload
    text, blocks = cherry_view([payload])
    check_one_image(markdown_urls(text) + blocks, gateway.base_url)


# Cherry Studio sends an earlier assistant message that has an image block back as content
# parts [text, image_url] (OpenAIApiClient.ts, convertMessageToSdkParam: image blocks whose url
# is a data: URL, for vision models). Its image blocks come from `images` of a reply to its
# OpenRouter provider, i.e. a request with modalities.
def test_cherry_studio_follow_up_with_image_part(cli, gateway, unique_name):
    """An assistant turn whose image is an image_url content part reaches Gemini once."""
    key = create_key(cli, unique_name, group="gemini")
    first_turn = [{"role": "user", "content": PROMPT}]
    status, _, first = post_chat(gateway, {"model": "nano-banana", "messages": first_turn, **MODALITIES}, key=key)
    assert status == 200, first
    message = first["choices"][0]["message"]
    (data_url,) = message_images(message)
    assert data_url.startswith("data:image/")

    assistant = {
        "role": "assistant",
        "content": [{"type": "text", "text": message["content"] or ""}, {"type": "image_url", "image_url": {"url": data_url}}],
    }
    body = {"model": "nano-banana", "messages": first_turn + [assistant, {"role": "user", "content": FOLLOW_UP}], "temperature": 0.7, "stream": False}
    status, _, second = post_chat(gateway, body, key=key)

    assert status == 200, second
    assert prompt_image_tokens(second["usage"]) == FLASH25_INPUT_TOKENS
    check_one_image(markdown_urls(second["choices"][0]["message"]["content"]), gateway.base_url)
