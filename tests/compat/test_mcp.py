"""The MCP server at ``/mcp``, driven by the official Python ``mcp`` SDK's client (PyPI) over
Streamable HTTP against a demo gateway: both eras of the protocol (the 2026-07-28 envelope the
SDK negotiates by default, and the initialize handshake), tool schemas checked as JSON Schema,
every tool, progress notifications, money (a key without credit refused, charges in the usage
rows) and a key's jobs kept from other keys.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.request

import jsonschema
import pytest
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from test_catalog import decode, fetch
from test_cli import create_key

PROMPT = "draw a banana on the moon"
FLASH25_INPUT_TOKENS = 258
WAIT = 90.0


def mcp_url(gateway) -> str:
    return gateway.base_url.removesuffix("/v1") + "/mcp"


def connect(gateway, key: str, mode: str = "auto") -> Client:
    """The SDK's client for the gateway's MCP endpoint, authenticated with ``key``."""
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    return Client(streamable_http_client(mcp_url(gateway), http_client=http), mode=mode)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, WAIT))


def own_usage(gateway, key: str) -> dict:
    request = urllib.request.Request(f"{gateway.base_url}/usage", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def image_blocks(result) -> list[tuple[bytes, str]]:
    return [(base64.b64decode(block.data, validate=True), block.mime_type) for block in result.content if block.type == "image"]


def links(result) -> list:
    return [block for block in result.content if block.type == "resource_link"]


@pytest.mark.parametrize("mode, version", [("auto", "2026-07-28"), ("legacy", "2025-11-25")])
def test_tools_are_listed_with_valid_schemas_from_the_catalog(gateway, mode, version):
    """Both eras connect; the six tools' input schemas are valid JSON Schema whose enums are the
    catalog's (the key's models, every model's ratios) and a valid call's arguments pass them."""
    with urllib.request.urlopen(urllib.request.Request(f"{gateway.base_url}/models", headers={"Authorization": f"Bearer {gateway.key}"}), timeout=30) as answer:
        models = json.loads(answer.read())["data"]

    async def scenario():
        async with connect(gateway, gateway.key, mode) as client:
            return client.protocol_version, client.server_info, (await client.list_tools()).tools

    negotiated, info, tools = run(scenario())

    assert negotiated == version and info.name == "NanoGate"
    by_name = {tool.name: tool for tool in tools}
    assert set(by_name) == {"generate_image", "edit_image", "list_models", "get_balance", "start_image_job", "get_image_job"}
    for tool in tools:
        jsonschema.Draft202012Validator.check_schema(tool.input_schema)
    generate = by_name["generate_image"].input_schema
    assert sorted(generate["properties"]["model"]["enum"]) == sorted(model["id"] for model in models)
    ratios = set(generate["properties"]["aspect_ratio"]["enum"])
    assert all(set(model["capabilities"]["aspect_ratios"]) <= ratios for model in models)
    assert by_name["edit_image"].input_schema["properties"]["images"]["maxItems"] == max(model["capabilities"]["max_input_images"] for model in models)
    jsonschema.validate({"prompt": PROMPT, "model": "nano-banana-pro", "aspect_ratio": "16:9", "size": "2k"}, generate)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"prompt": PROMPT, "aspect_ratio": "7:5"}, generate)


def test_generate_image_returns_the_image_and_its_link(gateway, cli, unique_name):
    """The image inline (a real PNG of the ratio asked) and a resource link serving the same
    bytes; the key's usage row holds the charge the result states."""
    key = create_key(cli, unique_name)

    async def scenario():
        async with connect(gateway, key) as client:
            return await client.call_tool("generate_image", {"prompt": PROMPT, "aspect_ratio": "16:9"})

    result = run(scenario())

    assert not result.is_error, result.content
    ((data, mime),) = image_blocks(result)
    assert mime == "image/png" and decode(data) == ("png", (1344, 768))
    (link,) = links(result)
    fetched, content_type = fetch(link.uri, gateway.base_url)
    assert fetched == data and content_type == "image/png"
    summary = result.structured_content
    assert summary["images"][0]["id"] == link.name and summary["size"] == "1344x768"
    rows = own_usage(gateway, key)["data"]
    assert len(rows) == 1 and rows[0]["endpoint"] == "images.generations" and rows[0]["images"] == 1
    assert rows[0]["cost_usd"] == pytest.approx(summary["usage"]["cost"])


def test_progress_notifications_while_google_works(gateway):
    """With a progress callback the answer is a stream: a notification first, then the result
    (its image inline, or by its link when too large for one event of the SDK's stream)."""
    seen: list[tuple[float, str | None]] = []

    async def progress(value, total, message):
        seen.append((value, message))

    async def scenario():
        async with connect(gateway, gateway.key) as client:
            return await client.call_tool("generate_image", {"prompt": PROMPT}, progress_callback=progress)

    result = run(scenario())

    assert not result.is_error, result.content
    assert seen and seen[0][0] == 0 and "Google" in (seen[0][1] or "")
    assert [value for value, _ in seen] == sorted(value for value, _ in seen)
    (link,) = links(result)
    data, _ = fetch(link.uri, gateway.base_url)
    assert decode(data) == ("png", (1024, 1024))


def test_edit_image_by_earlier_id_and_by_data_url(gateway):
    """edit_image takes the id of an earlier result (read from the store) and a data: URL; each
    reference reaches Gemini (its input image tokens)."""
    async def scenario():
        async with connect(gateway, gateway.key) as client:
            first = await client.call_tool("generate_image", {"prompt": PROMPT})
            image_id = first.structured_content["images"][0]["id"]
            by_id = await client.call_tool("edit_image", {"prompt": "make it blue", "image_ids": [image_id]})
            ((data, mime),) = image_blocks(first)
            by_url = await client.call_tool(
                "edit_image", {"prompt": "make it red", "images": ["data:image/png;base64," + base64.b64encode(data).decode()], "image_ids": [image_id]}
            )
            missing = await client.call_tool("edit_image", {"prompt": "nothing to edit"})
            return by_id, by_url, missing

    by_id, by_url, missing = run(scenario())

    assert not by_id.is_error, by_id.content
    assert by_id.structured_content["usage"]["input_tokens_details"]["image_tokens"] == FLASH25_INPUT_TOKENS
    assert by_url.structured_content["usage"]["input_tokens_details"]["image_tokens"] == 2 * FLASH25_INPUT_TOKENS
    assert missing.is_error
    assert json.loads(missing.content[0].text)["error"]["param"] == "images"


def test_list_models_and_the_balance_as_it_is_spent(gateway, cli, unique_name):
    """list_models names the key's models with capabilities; get_balance shows the credit
    going down by what a generation cost."""
    result = cli("keys", "create", "--name", unique_name, "--credit", "5")
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]

    async def scenario():
        async with connect(gateway, key) as client:
            models = await client.call_tool("list_models", {})
            before = await client.call_tool("get_balance", {})
            generated = await client.call_tool("generate_image", {"prompt": PROMPT})
            after = await client.call_tool("get_balance", {})
            return models, before, generated, after

    models, before, generated, after = run(scenario())

    names = [model["id"] for model in models.structured_content["models"]]
    assert "nano-banana" in names and "capabilities" in models.structured_content["models"][0]
    assert before.structured_content["balance_usd"] == pytest.approx(5)
    cost = generated.structured_content["usage"]["cost"]
    assert after.structured_content["balance_usd"] == pytest.approx(5 - cost)


def test_a_key_without_credit_is_refused(gateway, cli, unique_name):
    """A key whose credit cannot cover the image gets a tool error carrying OpenAI's
    insufficient_quota error, and is charged nothing."""
    result = cli("keys", "create", "--name", unique_name, "--credit", "0.001")
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]

    async def scenario():
        async with connect(gateway, key) as client:
            return await client.call_tool("generate_image", {"prompt": PROMPT, "model": "nano-banana-pro"})

    refused = run(scenario())

    assert refused.is_error
    assert json.loads(refused.content[0].text)["error"]["code"] == "insufficient_quota"
    assert own_usage(gateway, key)["key"]["spent_usd"] == 0


def test_jobs_run_in_the_background_and_stay_with_their_key(gateway, cli, unique_name):
    """start_image_job answers at once; get_image_job polls it to its image; another key
    cannot see it."""
    other = create_key(cli, unique_name)

    async def scenario():
        async with connect(gateway, gateway.key) as client:
            started = await client.call_tool("start_image_job", {"prompt": PROMPT, "model": "nano-banana-pro", "size": "2k"})
            job_id = started.structured_content["job_id"]
            async with connect(gateway, other) as intruder:
                hidden = await intruder.call_tool("get_image_job", {"job_id": job_id})
            deadline = time.monotonic() + WAIT / 2
            while True:
                state = await client.call_tool("get_image_job", {"job_id": job_id})
                if state.structured_content is None or state.structured_content.get("status") not in ("queued", "running"):
                    return started, hidden, state
                assert time.monotonic() < deadline, state.content
                await asyncio.sleep(0.3)

    started, hidden, done = run(scenario())

    assert not started.is_error and started.structured_content["status"] == "queued"
    assert hidden.is_error and json.loads(hidden.content[0].text)["error"]["code"] == "job_not_found"
    assert not done.is_error, done.content
    ((data, _),) = image_blocks(done)
    assert decode(data) == ("png", (2048, 2048))


def test_mcp_needs_a_key(gateway):
    """Without a key the endpoint is a 401 in OpenAI's error shape; GET is a 405."""
    request = urllib.request.Request(
        mcp_url(gateway), data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode(), method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=30)
    assert raised.value.code == 401
    assert json.loads(raised.value.read())["error"]["code"] == "invalid_api_key"

    get = urllib.request.Request(mcp_url(gateway), headers={"Authorization": f"Bearer {gateway.key}", "Accept": "text/event-stream"})
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(get, timeout=30)
    assert raised.value.code == 405
