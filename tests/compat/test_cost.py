"""The price on every answer (issue 22): ``usage.cost`` (USD, as OpenRouter returns it) and the
``X-NanoGate-Cost`` header equal the usage row's charge, read with the official SDK; the image
stream's ``completed`` event and the last chat chunk carry it; ``/v1/models`` says what one image
costs per size tier."""

from __future__ import annotations

import json
import time

import openai

from conftest import CLIENT_TIMEOUT, Gateway
from test_jobs import cli_in, new_key, root_of
from test_observability import http


def rows(gateway: Gateway, name: str) -> list[dict]:
    return json.loads(cli_in(gateway, "usage", "--key", name, "--json").stdout)


def newest_cost(gateway: Gateway, name: str, count: int) -> float:
    """The newest row's charge once ``count`` rows exist (a row is written as the answer ends)."""
    deadline = time.monotonic() + 30
    while len(found := rows(gateway, name)) < count:
        assert time.monotonic() < deadline, found
        time.sleep(0.2)
    return found[0]["cost_usd"]


def test_every_answer_says_what_it_cost(gateway: Gateway):
    name = f"cost-{time.time_ns()}"
    key = new_key(gateway, name)
    client = openai.OpenAI(api_key=key, base_url=gateway.base_url, timeout=CLIENT_TIMEOUT, max_retries=0)

    raw = client.images.with_raw_response.generate(model="nano-banana-pro", prompt="a banana", size="2k", response_format="b64_json")
    image = raw.parse()
    charged = newest_cost(gateway, name, 1)
    assert charged > 0
    assert abs(image.usage.cost - charged) < 1e-9, (image.usage, charged)
    assert raw.headers["X-NanoGate-Cost"] == f"{charged:.6f}"

    raw = client.chat.completions.with_raw_response.create(model="nano-banana", messages=[{"role": "user", "content": "a banana"}])
    completion = raw.parse()
    charged = newest_cost(gateway, name, 2)
    assert abs(completion.usage.cost - charged) < 1e-9 and raw.headers["X-NanoGate-Cost"] == f"{charged:.6f}"

    chunks = list(client.chat.completions.create(model="nano-banana", messages=[{"role": "user", "content": "a banana"}], stream=True))
    charged = newest_cost(gateway, name, 3)
    assert chunks[-1].usage is not None and abs(chunks[-1].usage.cost - charged) < 1e-9, chunks[-1]

    events = list(client.images.generate(model="nano-banana-2.1", prompt="a banana", stream=True, n=2))
    charged = newest_cost(gateway, name, 4)
    completed = [event for event in events if event.type.endswith(".completed")]
    assert len(completed) == 2
    assert abs(sum(event.usage.cost for event in completed) - charged) < 1e-9, "the images' shares add up to the charge"

    native = http("POST", f"{root_of(gateway)}/v1beta/models/nano-banana:generateContent", {"x-goog-api-key": key},
                  {"contents": [{"role": "user", "parts": [{"text": "a banana"}]}]})
    assert native.status == 200
    assert native.headers["x-nanogate-cost"] == f"{newest_cost(gateway, name, 5):.6f}"


def test_models_say_what_one_image_costs(gateway: Gateway):
    key = new_key(gateway, f"prices-{time.time_ns()}")
    client = openai.OpenAI(api_key=key, base_url=gateway.base_url, timeout=CLIENT_TIMEOUT, max_retries=0)
    models = {model.id: model.to_dict() for model in client.models.list().data}
    # Google's image tokens per tier at its price per 1M image tokens (Pro $120, 2.5 and 2.1 $30).
    assert models["nano-banana-pro"]["capabilities"]["image_prices"] == {"1K": 0.1344, "2K": 0.1344, "4K": 0.24}
    assert models["nano-banana"]["capabilities"]["image_prices"] == {"default": 0.0387}
    assert models["nano-banana-2.1"]["capabilities"]["image_prices"] == {"1K": 0.0336, "2K": 0.0504, "4K": 0.0756}
    assert models["nano-banana-pro-4k"]["capabilities"]["image_prices"] == {"4K": 0.24}


def test_a_flex_request_is_charged_half_and_says_so(gateway: Gateway):
    """``service_tier="flex"`` through the official SDK: Google is asked for flex, the answer's
    ``service_tier`` says flex and its ``usage.cost`` is half the standard one; ``priority`` is a
    403 for a key whose group does not allow it."""
    name = f"tiers-{time.time_ns()}"
    key = new_key(gateway, name)
    client = openai.OpenAI(api_key=key, base_url=gateway.base_url, timeout=CLIENT_TIMEOUT, max_retries=0)
    standard = client.chat.completions.create(model="nano-banana-pro", messages=[{"role": "user", "content": "a banana"}])
    flex = client.chat.completions.create(model="nano-banana-pro", messages=[{"role": "user", "content": "a banana"}], service_tier="flex")
    assert standard.service_tier == "default" and flex.service_tier == "flex"
    assert abs(flex.usage.cost * 2 - standard.usage.cost) < 2e-6, (flex.usage.cost, standard.usage.cost)
    image = client.images.generate(model="nano-banana-2.1", prompt="a banana", response_format="b64_json", extra_body={"service_tier": "flex"})
    assert image.model_extra["service_tier"] == "flex" and image.usage.cost > 0
    assert [row["cost_usd"] for row in rows(gateway, name)][0] == image.usage.cost
    try:
        client.images.generate(model="nano-banana-pro", prompt="a banana", extra_body={"service_tier": "priority"})
        raise AssertionError("priority was allowed for the default group")
    except openai.PermissionDeniedError as refused:
        assert refused.body["code"] == "tier_not_allowed"
    assert cli_in(gateway, "keys", "update", name, "--tiers", "standard,priority").returncode == 0
    priority = client.chat.completions.create(model="nano-banana-pro", messages=[{"role": "user", "content": "a banana"}], service_tier="priority")
    assert priority.service_tier == "priority" and abs(priority.usage.cost - 2 * standard.usage.cost) < 2e-6
