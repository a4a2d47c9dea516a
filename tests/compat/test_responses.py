"""OpenAI's Responses API (``POST /v1/responses``) driven by the official ``openai`` SDK, unmodified:
``client.responses.create``, ``.stream``, ``previous_response_id``, ``.retrieve``, ``.delete`` and
background responses, against a demo gateway and its Gemini emulator. Images are decoded with
Pillow; money is read back from the key's own ``/v1/usage``.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request

import openai
import pytest

from conftest import sdk_client
from test_catalog import decode
from test_cli import create_key

PROMPT = "draw a banana on the moon"
# Input image tokens the emulator bills per image sent to Gemini.
FLASH25_INPUT_TOKENS = 258
PRO_INPUT_TOKENS = 560
WAIT = 60.0


def images_of(response) -> list:
    return [item for item in response.output if item.type == "image_generation_call"]


def result_image(item) -> tuple[str, tuple[int, int]]:
    """(format, size) of an image item's base64 result, decoded; its own fields must agree."""
    fmt, size = decode(base64.b64decode(item.result, validate=True))
    assert item.output_format == fmt, (item.output_format, fmt)
    assert item.size == f"{size[0]}x{size[1]}", (item.size, size)
    return fmt, size


def own_usage(gateway, key: str) -> dict:
    request = urllib.request.Request(f"{gateway.base_url}/usage", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def usage_row(gateway, key: str, request_id: str) -> dict:
    """The key's usage row for a request, once written (rows are written as the answer ends)."""
    deadline = time.monotonic() + WAIT
    while True:
        rows = [row for row in own_usage(gateway, key)["data"] if row["request_id"] == request_id]
        if rows:
            return rows[0]
        assert time.monotonic() < deadline, f"no usage row for {request_id}"
        time.sleep(0.2)


def test_create_returns_an_image_text_and_usage(client, gateway):
    """A string input gives an image_generation_call item (a real PNG whose size and format the
    item states) and the model's text; usage and the usage row agree on the charge."""
    raw = client.responses.with_raw_response.create(model="nano-banana", input=PROMPT)
    response = raw.parse()

    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_") and response.model == "nano-banana"
    (image,) = images_of(response)
    assert image.status == "completed" and image.id.startswith("ig_")
    assert result_image(image) == ("png", (1024, 1024))
    assert response.output_text, "the model's text comes as an output_text message"
    usage = response.usage
    assert usage.output_tokens_details.model_extra["image_tokens"] == 1290
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    cost = usage.model_extra["cost"]
    assert cost > 0 and float(raw.headers["x-nanogate-cost"]) == pytest.approx(cost)
    row = usage_row(gateway, gateway.key, raw.headers["x-request-id"])
    assert row["endpoint"] == "responses" and row["status"] == 200 and row["images"] == 1
    assert row["cost_usd"] == pytest.approx(cost)


def test_image_generation_tool_follows_the_images_api_rules(client):
    """The tool's size, output format and compression are answered as on the images API."""
    response = client.responses.create(
        model="nano-banana-pro", input=PROMPT,
        tools=[{"type": "image_generation", "size": "2k", "aspect_ratio": "16:9", "output_format": "jpeg", "output_compression": 60}],
    )
    (image,) = images_of(response)
    assert result_image(image) == ("jpeg", (2752, 1536))
    assert response.tools[0].type == "image_generation"

    flash = client.responses.create(model="nano-banana", input=PROMPT, tools=[{"type": "image_generation", "size": "1536x1024"}])
    assert result_image(images_of(flash)[0])[1] == (1248, 832), "OpenAI's landscape size is the 3:2 row of the table"


@pytest.mark.parametrize(
    "tools, param",
    [
        ([{"type": "web_search"}], "tools[0].type"),
        ([{"type": "image_generation", "background": "transparent"}], "background"),
        ([{"type": "image_generation", "size": "3k"}], "size"),
        ([{"type": "image_generation"}, {"type": "image_generation"}], "tools[1]"),
    ],
)
def test_bad_tools_are_400s_that_name_the_field(gateway, cli, unique_name, tools, param):
    """A bad tool is a 400 naming the field, and nothing is charged."""
    key = create_key(cli, unique_name)
    client = sdk_client(gateway, key)
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="nano-banana", input=PROMPT, tools=tools)
    assert raised.value.body["param"] == param, raised.value.body
    assert own_usage(gateway, key)["key"]["spent_usd"] == 0


def test_previous_response_id_continues_the_conversation(client):
    """The next turn sends the earlier image to Gemini (its input image tokens) without the
    client sending anything back; the earlier instructions are not carried over."""
    first = client.responses.create(model="nano-banana-pro", input=PROMPT, instructions="Photographic style.")
    second = client.responses.create(model="nano-banana-pro", input="now make the banana blue", previous_response_id=first.id)

    assert second.previous_response_id == first.id and second.instructions is None
    assert second.usage.input_tokens_details.model_extra["image_tokens"] == PRO_INPUT_TOKENS
    assert result_image(images_of(second)[0])[0] == "png"
    third = client.responses.create(model="nano-banana-pro", input="and add a star", previous_response_id=second.id)
    assert third.usage.input_tokens_details.model_extra["image_tokens"] == 2 * PRO_INPUT_TOKENS


def test_input_items_edit_an_image_and_send_earlier_items_back(client):
    """input_image parts (data URLs) make an edit; an earlier image_generation_call item sent back
    by hand (store false) is the model's turn, its image sent once."""
    first = client.responses.create(model="nano-banana", input=PROMPT, store=False)
    (image,) = images_of(first)
    data_url = "data:image/png;base64," + image.result

    edit = client.responses.create(
        model="nano-banana",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "put a hat on it"}, {"type": "input_image", "image_url": data_url}]}],
        store=False,
    )
    assert edit.usage.input_tokens_details.model_extra["image_tokens"] == FLASH25_INPUT_TOKENS

    replay = client.responses.create(
        model="nano-banana",
        input=[{"role": "user", "content": PROMPT}, {"type": "image_generation_call", "id": image.id, "status": "completed", "result": image.result}, {"role": "user", "content": "make it blue"}],
        store=False,
    )
    assert replay.usage.input_tokens_details.model_extra["image_tokens"] == FLASH25_INPUT_TOKENS
    assert images_of(replay)[0].status == "completed"


def test_stream_events_come_in_openais_order(client):
    """``responses.stream``: created, in_progress, the image call's added / in_progress /
    generating, Gemini 3 Pro's thought image as a partial image, the item done with its result,
    then completed; the final response is what GET returns."""
    with client.responses.stream(model="nano-banana-pro", input=PROMPT, tools=[{"type": "image_generation", "partial_images": 2}]) as stream:
        events = list(stream)
        final = stream.get_final_response()

    types = [event.type for event in events]
    assert types[:5] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.image_generation_call.in_progress", "response.image_generation_call.generating",
    ], types
    assert types[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    partials = [event for event in events if event.type == "response.image_generation_call.partial_image"]
    assert 1 <= len(partials) <= 2
    decode(base64.b64decode(partials[0].partial_image_b64, validate=True))
    (image,) = images_of(final)
    done = [event for event in events if event.type == "response.output_item.done" and event.item.type == "image_generation_call"]
    assert len(done) == 1 and done[0].item.result == image.result
    assert types.index("response.output_item.done") > types.index("response.image_generation_call.partial_image")
    assert result_image(image)[1] == (1024, 1024)
    assert final.output_text and final.usage.model_extra["cost"] > 0

    stored = client.responses.retrieve(final.id)
    assert stored.status == "completed" and images_of(stored)[0].result == image.result


def test_stream_true_with_create(client):
    """``create(stream=True)`` yields typed events ending in response.completed."""
    events = list(client.responses.create(model="nano-banana", input=PROMPT, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert images_of(events[-1].response)[0].result


def test_stored_responses_belong_to_their_key(gateway, cli, unique_name, client):
    """GET, DELETE and previous_response_id of another key's response are 404s; the owner
    deletes it, after which it is gone; store false keeps nothing."""
    other = sdk_client(gateway, create_key(cli, unique_name))
    response = client.responses.create(model="nano-banana", input=PROMPT)

    for attempt in (lambda: other.responses.retrieve(response.id), lambda: other.responses.delete(response.id)):
        with pytest.raises(openai.NotFoundError):
            attempt()
    with pytest.raises(openai.NotFoundError) as raised:
        other.responses.create(model="nano-banana", input="again", previous_response_id=response.id)
    assert raised.value.code == "previous_response_not_found"

    assert client.responses.retrieve(response.id).id == response.id
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)

    unstored = client.responses.create(model="nano-banana", input=PROMPT, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_background_response_is_polled_to_completion(gateway, cli, unique_name):
    """``background: true`` answers at once (queued); GET shows it completed with its image;
    the key is charged once, for that image."""
    key = create_key(cli, unique_name)
    client = sdk_client(gateway, key)
    queued = client.responses.create(model="nano-banana", input=PROMPT, background=True)
    assert queued.status in ("queued", "in_progress") and queued.background

    deadline = time.monotonic() + WAIT
    while (current := client.responses.retrieve(queued.id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline, current.status
        time.sleep(0.2)
    assert current.status == "completed", current
    (image,) = images_of(current)
    assert result_image(image) == ("png", (1024, 1024))
    rows = [row for row in own_usage(gateway, key)["data"] if row["endpoint"] == "responses"]
    assert len(rows) == 1 and rows[0]["images"] == 1
    assert rows[0]["cost_usd"] == pytest.approx(current.usage.model_extra["cost"])


def test_a_key_without_credit_is_refused_before_google(gateway, cli, unique_name):
    """No credit: 429 insufficient_quota, nothing charged."""
    result = cli("keys", "create", "--name", unique_name, "--credit", "0.001")
    assert result.returncode == 0, result.stderr
    client = sdk_client(gateway, result.stdout.strip().splitlines()[-1])
    with pytest.raises(openai.RateLimitError) as raised:
        client.responses.create(model="nano-banana-pro", input=PROMPT)
    assert raised.value.code == "insufficient_quota"


def test_idempotency_key_answers_the_same_response_once(gateway, cli, unique_name):
    """A retried request with the same Idempotency-Key gets the same response and one charge."""
    key = create_key(cli, unique_name)
    body = json.dumps({"model": "nano-banana", "input": PROMPT}).encode()
    answers = []
    for _ in range(2):
        request = urllib.request.Request(
            f"{gateway.base_url}/responses", data=body, method="POST",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Idempotency-Key": f"{unique_name}-1"},
        )
        with urllib.request.urlopen(request, timeout=120) as answer:
            answers.append(json.loads(answer.read()))
    assert answers[0]["id"] == answers[1]["id"]
    rows = [row for row in own_usage(gateway, key)["data"] if row["endpoint"] == "responses"]
    assert len(rows) == 1


def test_errors_have_openais_shape(gateway):
    """An unknown model is a 404 in OpenAI's error shape."""
    request = urllib.request.Request(
        f"{gateway.base_url}/responses", data=json.dumps({"model": "gpt-9", "input": "x"}).encode(), method="POST",
        headers={"Authorization": f"Bearer {gateway.key}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=30)
    body = json.loads(raised.value.read())
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == "model"


def test_a_refusal_is_incomplete_and_costs_nothing(gateway, cli, unique_name):
    """Google's safety stop: status incomplete (content_filter), the refusal as a message, no charge."""
    key = create_key(cli, unique_name)
    response = sdk_client(gateway, key).responses.create(model="nano-banana", input="a banana [emulate:image_safety]")

    assert response.status == "incomplete" and response.incomplete_details.reason == "content_filter"
    refusals = [part for item in response.output if item.type == "message" for part in item.content if part.type == "refusal"]
    assert refusals and "IMAGE_SAFETY" in refusals[0].refusal
    assert images_of(response)[0].status == "failed" and images_of(response)[0].result is None
    assert response.usage.model_extra["cost"] == 0
    assert own_usage(gateway, key)["key"]["spent_usd"] == 0


def test_an_upstream_failure_is_an_openai_error_and_costs_nothing(gateway, cli, unique_name):
    """Google answering garbage is a 502 in OpenAI's shape; the key pays nothing."""
    key = create_key(cli, unique_name)
    with pytest.raises(openai.APIStatusError) as raised:
        sdk_client(gateway, key).responses.create(model="nano-banana", input="a banana [emulate:garbage]")
    assert raised.value.status_code == 502 and raised.value.body["type"]
    assert own_usage(gateway, key)["key"]["spent_usd"] == 0


def stream_until(gateway, key: str, prompt: str, request_id: str, stop_after: str) -> list[str]:
    """Streams a response over a raw connection and hangs up right after the event ``stop_after``
    (its data line read whole)."""
    request = urllib.request.Request(
        f"{gateway.base_url}/responses", data=json.dumps({"model": "nano-banana", "input": prompt, "stream": True}).encode(), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", "x-request-id": request_id},
    )
    seen = []
    answer = urllib.request.urlopen(request, timeout=120)
    try:
        for raw in answer:
            line = raw.decode().strip()
            if line.startswith("event: "):
                seen.append(line[len("event: "):])
            elif line.startswith("data: ") and seen and seen[-1] == stop_after:
                json.loads(line[len("data: "):])  # the event arrived whole
                break
    finally:
        answer.fp.raw._sock.close()  # hang up now, mid-stream
        answer.close()
    return seen


def test_a_client_leaving_before_the_image_pays_nothing(gateway, cli, unique_name):
    """Gone after response.created, while Google still works: the row says 499, nothing charged."""
    key = create_key(cli, unique_name)
    request_id = f"leave-{unique_name}"
    seen = stream_until(gateway, key, "a banana [emulate:slow=4000]", request_id, "response.created")
    assert seen == ["response.created"]

    row = usage_row(gateway, key, request_id)
    assert row["status"] == 499 and row["cost_usd"] == 0 and row["images"] == 0, row
    assert own_usage(gateway, key)["key"]["spent_usd"] == 0


def test_a_client_leaving_after_the_image_pays_for_it(gateway, cli, unique_name):
    """Gone right after the image's output_item.done: it has the image, so it is charged."""
    key = create_key(cli, unique_name)
    request_id = f"kept-{unique_name}"
    seen = stream_until(gateway, key, PROMPT, request_id, "response.output_item.done")
    assert "response.completed" not in seen

    row = usage_row(gateway, key, request_id)
    assert row["images"] == 1 and row["cost_usd"] > 0, row


def test_a_cancelled_background_response_costs_nothing(gateway, cli, unique_name):
    """``responses.cancel`` while Google still works: cancelled, its credit released, no charge."""
    key = create_key(cli, unique_name)
    client = sdk_client(gateway, key)
    queued = client.responses.create(model="nano-banana", input="a banana [emulate:slow=20000]", background=True)

    cancelled = client.responses.cancel(queued.id)

    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(queued.id).status == "cancelled"
    deadline = time.monotonic() + WAIT
    while (account := own_usage(gateway, key))["key"]["reserved_usd"] != 0 or not account["data"]:
        assert time.monotonic() < deadline, account
        time.sleep(0.2)
    assert account["key"]["spent_usd"] == 0 and account["data"][0]["cost_usd"] == 0


def test_prefer_keep_alive_sends_spaces_then_the_response(gateway):
    """``Prefer: keep-alive=1``: the status and headers at once, spaces while Google works, then
    the response, which the SDK reads as usual."""
    raw = sdk_client(gateway).responses.with_raw_response.create(
        model="nano-banana", input="a banana [emulate:slow=2500]", extra_headers={"Prefer": "keep-alive=1"}
    )
    assert raw.headers.get("preference-applied") == "keep-alive"
    body = raw.http_response.content
    assert body.startswith(b" ") and json.loads(body)["status"] == "completed"
    assert result_image(images_of(raw.parse())[0]) == ("png", (1024, 1024))
