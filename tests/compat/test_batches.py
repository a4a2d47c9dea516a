"""Half-price batches through OpenAI's own Files and Batch APIs, with the official SDK: a JSONL
of 20 image requests becomes one of Google's batches (the emulator's ``batchGenerateContent``,
answered after its delay), every line comes back in the output file, and the key is charged
half of what the same requests cost one by one."""

from __future__ import annotations

import base64
import io
import json
import time

import openai
import pytest

from conftest import CLIENT_TIMEOUT, Gateway
from test_jobs import cli_in, new_key, root_of

PNG = b"\x89PNG\r\n\x1a\n"
LINES = 20


def client_for(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=gateway.base_url, timeout=CLIENT_TIMEOUT, max_retries=0)


def jsonl(lines: list[dict]) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())


def line(index: int, **body) -> dict:
    return {"custom_id": f"req-{index}", "method": "POST", "url": "/v1/images/generations",
            "body": {"model": "nano-banana", "prompt": f"banana number {index}", **body}}


def usage_rows(gateway: Gateway, name: str) -> list[dict]:
    return json.loads(cli_in(gateway, "usage", "--key", name, "--json").stdout)


@pytest.fixture
def batch_gateway(private_gateway) -> Gateway:
    # The demo's emulator answers a batch after 2 s; poll every second.
    return private_gateway(env={"NANOGATE_BATCH_POLL": "1"})


def test_a_batch_of_twenty_completes_at_half_price(batch_gateway: Gateway):
    gateway = batch_gateway
    name = f"batcher-{time.time_ns()}"
    key = new_key(gateway, name)
    assert cli_in(gateway, "keys", "update", name, "--credit", "5").returncode == 0  # a key with credit: the batch reserves, then settles
    client = client_for(gateway, key)

    # The price of one request sent alone, for comparison.
    single = client.images.generate(model="nano-banana", prompt="banana number alone", response_format="b64_json")
    assert base64.b64decode(single.data[0].b64_json).startswith(PNG)
    alone = [row for row in usage_rows(gateway, name) if row["cost_usd"] > 0]
    assert len(alone) == 1
    full_price = alone[0]["cost_usd"]

    uploaded = client.files.create(file=("requests.jsonl", jsonl([line(i, response_format="b64_json") for i in range(LINES)])), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes > 0
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="24h")
    assert batch.status == "in_progress" and batch.request_counts.total == LINES

    deadline = time.monotonic() + 60
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts.completed == LINES and batch.request_counts.failed == 0
    assert batch.output_file_id

    output = client.files.content(batch.output_file_id).text.splitlines()
    assert len(output) == LINES
    answers = {entry["custom_id"]: entry for entry in map(json.loads, output)}
    assert set(answers) == {f"req-{i}" for i in range(LINES)}
    for entry in answers.values():
        assert entry["error"] is None and entry["response"]["status_code"] == 200
        image = entry["response"]["body"]["data"][0]["b64_json"]
        assert base64.b64decode(image).startswith(PNG)

    rows = usage_rows(gateway, name)
    batch_rows = [row for row in rows if row["request_id"].startswith("batch_req_")]
    assert len(batch_rows) == LINES and {row["request_id"] for row in batch_rows} == {entry["id"] for entry in answers.values()}, rows
    for row in batch_rows:
        assert abs(row["cost_usd"] - full_price / 2) <= 0.000002, (row["cost_usd"], full_price)

    key_view = json.loads(cli_in(gateway, "keys", "show", name, "--json").stdout)
    assert key_view["reserved_usd"] == 0
    assert abs(key_view["spent_usd"] - (full_price + sum(row["cost_usd"] for row in batch_rows))) < 1e-6

    # The output (twenty images in base64) is in the file store; the database holds its name.
    images = [entry["response"]["body"]["data"][0]["b64_json"] for entry in answers.values()]
    assert_not_in_database(gateway, images)


def assert_not_in_database(gateway: Gateway, images: list[str]) -> None:
    """No stretch of these base64 images is in the gateway's SQLite files (the database and
    its write-ahead log), read as bytes: payloads live in the image and file stores."""
    files = sorted(gateway.data_dir.glob("*.sqlite*"))
    assert files, list(gateway.data_dir.iterdir())
    content = b"".join(path.read_bytes() for path in files)
    for image in images:
        assert len(image) > 400, len(image)
        # A stretch past the PNG header (which every image shares) and short of its end.
        stretch = image[200:264].encode()
        assert stretch not in content, "an image's base64 is in the database"


def test_a_bad_line_refuses_the_batch_and_charges_nothing(batch_gateway: Gateway):
    gateway = batch_gateway
    client = client_for(gateway, gateway.key)
    bad = client.files.create(file=("bad.jsonl", jsonl([line(0), line(1, model="no-such-model")])), purpose="batch")
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(input_file_id=bad.id, endpoint="/v1/images/generations", completion_window="24h")
    assert "Line 2" in str(refused.value)
    mixed = client.files.create(file=("mixed.jsonl", jsonl([line(0), line(1, model="nano-banana-2")])), purpose="batch")
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(input_file_id=mixed.id, endpoint="/v1/images/generations", completion_window="24h")
    assert "one model" in str(refused.value)
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", jsonl([line(0)])), purpose="fine-tune")


def test_files_and_batches_are_the_keys_own(batch_gateway: Gateway):
    gateway = batch_gateway
    mine = client_for(gateway, gateway.key)
    other = client_for(gateway, new_key(gateway, f"other-{time.time_ns()}"))
    uploaded = mine.files.create(file=("requests.jsonl", jsonl([line(0)])), purpose="batch")
    batch = mine.batches.create(input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.create(input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="24h")
    assert mine.files.retrieve(uploaded.id).id == uploaded.id
    deadline = time.monotonic() + 60
    # `finalizing` comes between `in_progress` and `completed` (the output being written).
    while (batch := mine.batches.retrieve(batch.id)).status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert batch.status == "completed"
    entry = json.loads(mine.files.content(batch.output_file_id).text.splitlines()[0])
    assert entry["response"]["body"]["data"][0]["url"].startswith(root_of(gateway) + "/v1/files/images/"), "the default group answers URLs"


def test_a_batch_in_progress_is_cancelled_and_charges_nothing(private_gateway):
    # Polled every second, but the emulator keeps it pending for 2 s: there is time to cancel.
    gateway = private_gateway(env={"NANOGATE_BATCH_POLL": "1"})
    name = f"canceller-{time.time_ns()}"
    key = new_key(gateway, name)
    assert cli_in(gateway, "keys", "update", name, "--credit", "5").returncode == 0
    client = client_for(gateway, key)
    uploaded = client.files.create(file=("requests.jsonl", jsonl([line(i) for i in range(3)])), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="24h")
    held = json.loads(cli_in(gateway, "keys", "show", name, "--json").stdout)
    assert held["reserved_usd"] > 0, "the batch's worst case is held"
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling", "Google is asked to stop; what it answered first is still delivered"
    assert [b.id for b in client.batches.list().data][:1] == [batch.id]
    deadline = time.monotonic() + 60
    while (cancelled := client.batches.retrieve(batch.id)).status == "cancelling":
        assert time.monotonic() < deadline, cancelled
        time.sleep(0.3)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at and cancelled.output_file_id is None, cancelled
    # A batch submitted after it, with the same delay at Google, completes: the poller has
    # passed the cancelled one's moment by then.
    later = client.batches.create(
        input_file_id=client.files.create(file=("later.jsonl", jsonl([line(9)])), purpose="batch").id,
        endpoint="/v1/images/generations", completion_window="24h",
    )
    deadline = time.monotonic() + 60
    while (later := client.batches.retrieve(later.id)).status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, later
        time.sleep(0.5)
    assert later.status == "completed", later
    assert client.batches.retrieve(batch.id).status == "cancelled", "never delivered afterwards"
    key_view = json.loads(cli_in(gateway, "keys", "show", name, "--json").stdout)
    later_rows = [row for row in usage_rows(gateway, name) if row["cost_usd"] > 0]
    assert len(later_rows) == 1, later_rows
    assert key_view["reserved_usd"] == 0 and key_view["spent_usd"] == pytest.approx(later_rows[0]["cost_usd"]), "the cancelled batch charged nothing"
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_a_large_output_goes_to_the_bucket_in_parts(private_gateway, s3_server):
    """With the shared bucket as the store, a batch output larger than one part (8 MiB) is
    uploaded as a multipart upload as it is read from disk (S3's ETag of such an object ends
    in ``-N``, N parts), and downloaded back whole through the Files API."""
    prefix = f"parts-{time.time_ns()}"
    gateway = private_gateway(env={"NANOGATE_BATCH_POLL": "1", **s3_server.gateway_env(prefix)})
    client = client_for(gateway, gateway.key)
    # 2K images in base64: a few MiB each, so a dozen lines pass 8 MiB.
    lines = [line(i, model="nano-banana-pro", size="2k", response_format="b64_json") for i in range(12)]
    uploaded = client.files.create(file=("big.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="24h")
    deadline = time.monotonic() + 120
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 12, batch

    described = client.files.retrieve(batch.output_file_id)
    assert described.bytes > 8 * 1024 * 1024, described.bytes
    content = client.files.content(batch.output_file_id).content
    assert len(content) == described.bytes
    answers = [json.loads(text) for text in content.decode().splitlines()]
    assert sorted(entry["custom_id"] for entry in answers) == sorted(f"req-{i}" for i in range(12))
    assert all(base64.b64decode(entry["response"]["body"]["data"][0]["b64_json"]).startswith(PNG) for entry in answers)

    s3 = s3_server.client()
    objects = s3.list_objects_v2(Bucket=s3_server.bucket, Prefix=f"{prefix}/files/").get("Contents", [])
    outputs = [obj for obj in objects if obj["Size"] == described.bytes]
    assert len(outputs) == 1, objects
    head = s3.head_object(Bucket=s3_server.bucket, Key=outputs[0]["Key"])
    parts = int(head["ETag"].strip('"').rsplit("-", 1)[1])
    assert parts == -(-described.bytes // (8 * 1024 * 1024)), head["ETag"]
    assert s3.get_object(Bucket=s3_server.bucket, Key=outputs[0]["Key"])["Body"].read() == content
