"""Several gateways, one service: two ``nanogate serve`` processes (A and B) on one fresh
PostgreSQL database (``NANOGATE_DATABASE_URL``) and one moto S3 bucket (``NANOGATE_IMAGE_STORE``),
each with a data directory of its own (so nothing is shared through a local file), in front of one
``gemini-emulator`` reached through a small recording proxy written here (it keeps what the
gateways sent Google, so a test can check the thought signatures of a second chat turn). Then
nginx with ``deploy/nginx.conf`` in front of both.

What a user of a two-instance deployment would notice, each checked from outside: image URLs are
presigned URLs of the bucket that a plain HTTP client fetches; an idempotent retry on the other
instance gets the first answer and one charge; a chat's second turn on the other instance keeps
its thought signatures; 50 parallel requests against a small credit never overspend; a key
revoked on one instance is refused on the other at once; ``nanogate migrate`` runs beside them;
RPM limits count both instances; the credit held by an instance killed mid-request comes back
after its lease; /ready tells a load balancer when the bucket is gone; nginx spreads requests
over both and streams chat through.

Needs ``NANOGATE_TEST_PG_URL`` (a PostgreSQL server's URL, ``…/postgres``; scripts/test.sh
starts one with scripts/postgres.sh): each run makes a database of its own there and drops it
afterwards. The module is skipped without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from http.client import HTTPConnection
from pathlib import Path
from typing import Iterator, NamedTuple

import openai
import pytest

from conftest import CLIENT_TIMEOUT, KEY_CACHE_SECONDS, S3Server
from nginx_support import running_nginx
from pg_support import PG_URL, database_url, fresh_database, psql
from test_billing import ADMIN_TOKEN, admin
from test_channels import Call, Served, cli, emulator, fake_server, ok, serve, write_config
from test_chat import PRO_INPUT_TOKENS, markdown_urls
from test_observability import CHAT, GENERATIONS, Answer, bearer, error_code, http, parse_metrics, total

if not PG_URL:
    pytest.skip(
        "NANOGATE_TEST_PG_URL is unset: the two-instance tests need a PostgreSQL server "
        "(scripts/test.sh starts one with scripts/postgres.sh and exports it)",
        allow_module_level=True,
    )

GOOGLE_KEY = "instances-google-key"
URL_TTL = 600  # NANOGATE_URL_TTL of the instances: the presigned URLs' X-Amz-Expires
LEASE = 3  # NANOGATE_RESERVATION_LEASE: the shortest the gateway takes
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BYPASS_SIGNATURES = {"context_engineering_is_the_way_to_go", "skip_thought_signature_validator"}
TRACE = "ng-trace-"  # prompts carrying this are recorded whole by the upstream proxy


# ---------------------------------------------------------------------------------------------
# PostgreSQL: a fresh database on NANOGATE_TEST_PG_URL's server, through the cluster's psql


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """The URL of a database made for this module (dropped at its end)."""
    with fresh_database("nanogate_instances") as url:
        yield url


# ---------------------------------------------------------------------------------------------
# The emulator behind a recording proxy


class Traced(NamedTuple):
    """A generateContent call whose prompt carried TRACE: the request as sent, and the thought
    signatures of the answer."""

    body: dict
    issued: list[str]


class Upstream(NamedTuple):
    url: str
    traced: list[Traced]

    def call_with(self, text: str) -> Traced:
        """The one recorded call whose last user turn holds ``text``."""
        found = [t for t in self.traced if text in json.dumps(user_texts(t.body)[-1:])]
        assert len(found) == 1, f"{len(found)} upstream calls carry {text!r}"
        return found[0]


def user_texts(body: dict) -> list[str]:
    """The text of every user turn of a Gemini request, in order."""
    return [
        " ".join(part.get("text", "") for part in content.get("parts", []))
        for content in body.get("contents", [])
        if content.get("role", "user") == "user"
    ]


def signatures_in(payload: bytes, content_type: str) -> list[str]:
    """Every thoughtSignature of a generateContent answer (JSON, or the SSE of streamGenerateContent)."""
    text = payload.decode("utf-8", "replace")
    if "event-stream" in content_type:
        documents = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    else:
        documents = [text]
    found = []
    for document in documents:
        with contextlib.suppress(ValueError):
            for candidate in json.loads(document).get("candidates") or []:
                for part in (candidate.get("content") or {}).get("parts") or []:
                    if signature := part.get("thoughtSignature") or part.get("thought_signature"):
                        found.append(signature)
    return found


@pytest.fixture(scope="module")
def upstream(nanogate_bin: Path) -> Iterator[Upstream]:
    """``gemini-emulator`` behind a forwarding proxy that records the traced calls."""
    traced: list[Traced] = []
    lock = threading.Lock()
    with emulator(nanogate_bin) as target:

        def forward(call: Call) -> tuple[int, dict[str, str], bytes]:
            headers = {k: v for k, v in call.headers.items() if k in ("content-type", "x-goog-api-key", "authorization", "accept")}
            request = urllib.request.Request(
                target + call.path, method=call.method, headers=headers, data=call.body if call.method == "POST" else None
            )
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    status, content_type, payload = response.status, response.headers.get("Content-Type", ""), response.read()
            except urllib.error.HTTPError as error:
                status, content_type, payload = error.code, error.headers.get("Content-Type", ""), error.read()
            if call.method == "POST" and TRACE.encode() in call.body:
                with lock:
                    traced.append(Traced(json.loads(call.body), signatures_in(payload, content_type)))
            return status, {"Content-Type": content_type or "application/json"}, payload

        with fake_server(forward) as (url, _calls):
            yield Upstream(url, traced)


# ---------------------------------------------------------------------------------------------
# The instances


class Cluster(NamedTuple):
    a: Served
    b: Served
    s3: S3Server
    prefix: str  # the instances' key prefix in the bucket
    database: str
    env: dict[str, str]  # what every instance of this module is started with
    config: Path
    root: Path  # parent of the instances' data dirs


@contextlib.contextmanager
def instances(nanogate_bin: Path, config: Path, root: Path, envs: dict[str, dict[str, str]]) -> Iterator[dict[str, Served]]:
    """One ``nanogate serve`` per name, started at the same time (on a fresh database their
    migrations race: the advisory lock's job), each with its own data dir under ``root``."""
    with contextlib.ExitStack() as stack:
        managers = {name: serve(nanogate_bin, config, root / name, env=env) for name, env in envs.items()}
        with ThreadPoolExecutor(len(managers)) as pool:
            futures = {name: pool.submit(manager.__enter__) for name, manager in managers.items()}
        started: dict[str, Served] = {}
        failure: BaseException | None = None
        for name, future in futures.items():
            try:
                started[name] = future.result()
                stack.push(managers[name].__exit__)
            except BaseException as error:  # pytest.fail raises a BaseException
                failure = failure or error
        if failure is not None:
            raise failure
        # Stopped together, not one after the other (a graceful stop takes seconds).
        stack.callback(lambda: [served.proc.send_signal(signal.SIGTERM) for served in started.values() if served.proc.poll() is None])
        yield started


@pytest.fixture(scope="module")
def cluster(nanogate_bin: Path, database: str, upstream: Upstream, s3_server: S3Server, tmp_path_factory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("instances")
    config = write_config(root / "nanogate.json", {
        "channels": [{"name": "gemini", "kind": "gemini", "base_url": upstream.url, "api_keys": [GOOGLE_KEY]}],
    })
    prefix = f"instances-{uuid.uuid4().hex[:8]}"
    env = {
        "NANOGATE_DATABASE_URL": database,
        **s3_server.gateway_env(prefix),
        "NANOGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        "NANOGATE_URL_TTL": str(URL_TTL),
        "NANOGATE_RESERVATION_LEASE": str(LEASE),
        "NANOGATE_KEEPALIVE": "1",
        "NANOGATE_CHECK_MODELS": "0",
    }
    envs = {name: {**env, "NANOGATE_INSTANCE_ID": f"instance-{name}"} for name in ("a", "b")}
    with instances(nanogate_bin, config, root, envs) as started:
        yield Cluster(started["a"], started["b"], s3_server, prefix, database, env, config, root)


def instance(setup: Cluster, nanogate_bin: Path, name: str, **overrides: str):
    """Another instance on the module's database and bucket (``serve``'s context manager)."""
    env = {**setup.env, "NANOGATE_INSTANCE_ID": f"instance-{name}", **overrides}
    return serve(nanogate_bin, setup.config, setup.root / name, env=env)


# ---------------------------------------------------------------------------------------------
# Requests


def new_key(setup: Cluster, **fields) -> tuple[str, str]:
    """A key made through A's admin API; returns (name, secret)."""
    name = f"inst-{uuid.uuid4().hex[:10]}"
    status, body = admin(setup.a, "POST", "keys", {"name": name, **fields})
    assert status == 201, body
    return name, json.loads(body)["secret"]


def key_view(served: Served, name: str) -> dict:
    status, body = admin(served, "GET", f"keys/{name}")
    assert status == 200, body
    return json.loads(body)


def usage_of(served: Served, name: str) -> list[dict]:
    status, body = admin(served, "GET", f"usage?key={name}")
    assert status == 200, body
    return json.loads(body)


def generate(served: Served, secret: str, prompt: str = "a banana", headers: dict[str, str] | None = None, **fields) -> Answer:
    body = {"model": "nano-banana", "prompt": prompt, "response_format": "url", **fields}
    return http("POST", served.root + GENERATIONS, {**bearer(secret), **(headers or {})}, body)


def wait_for(condition, timeout: float, what: str, interval: float = 0.2):
    """Poll ``condition()`` until it returns something truthy; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        if value := condition():
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f}s"
        time.sleep(interval)


def settled(served: Served, name: str) -> dict:
    """The key once nothing is reserved on it any more (settlement may land just after the answer)."""
    views: list[dict] = []

    def check():
        views.append(key_view(served, name))
        return views[-1] if views[-1]["reserved_usd"] == 0 else None

    try:
        return wait_for(check, 15, "the key's reservations were settled")
    except AssertionError as error:
        raise AssertionError(f"{error}: {views[-1]}") from None


def fetch(url: str) -> tuple[int, bytes]:
    """A plain HTTP GET, as a browser or curl would do it (no S3 client, no credentials)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE, f"not a PNG (starts with {data[:8]!r})"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# ---------------------------------------------------------------------------------------------
# AWS Signature V4 of a presigned GET (query-string form), recomputed independently


def presigned_signature(url: str, secret_key: str) -> str:
    """The X-Amz-Signature a presigned GET ``url`` must carry under ``secret_key`` (AWS SigV4,
    query-string authentication, UNSIGNED-PAYLOAD, the host header signed)."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if k != "X-Amz-Signature"]
    params = dict(query)

    def encode(text: str) -> str:
        return urllib.parse.quote(text, safe="-_.~")

    canonical_query = "&".join(f"{k}={v}" for k, v in sorted((encode(k), encode(v)) for k, v in query))
    canonical_uri = urllib.parse.quote(urllib.parse.unquote(parts.path), safe="/-_.~")
    signed = params["X-Amz-SignedHeaders"].split(";")
    assert signed == ["host"], f"only the host header can be signed for a plain GET: {signed}"
    canonical_request = "\n".join(["GET", canonical_uri, canonical_query, f"host:{parts.netloc}\n", "host", "UNSIGNED-PAYLOAD"])
    _, date, region, service, terminator = params["X-Amz-Credential"].split("/")
    scope = f"{date}/{region}/{service}/{terminator}"
    string_to_sign = "\n".join(["AWS4-HMAC-SHA256", params["X-Amz-Date"], scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
    key = ("AWS4" + secret_key).encode()
    for piece in (date, region, service, terminator):
        key = hmac.new(key, piece.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def test_signature_check_agrees_with_botocore(s3_server: S3Server):
    """The checker below is right: it accepts botocore's presigned URLs and nothing altered."""
    client = s3_server.client()
    url = client.generate_presigned_url("get_object", Params={"Bucket": s3_server.bucket, "Key": "x/abc.png"}, ExpiresIn=77)
    signature = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["X-Amz-Signature"]
    assert presigned_signature(url, s3_server.secret_key) == signature
    assert presigned_signature(url.replace("X-Amz-Expires=77", "X-Amz-Expires=78"), s3_server.secret_key) != signature
    assert presigned_signature(url, "another-secret") != signature


# ---------------------------------------------------------------------------------------------
# 1. Images in the bucket, presigned URLs


def test_url_is_a_presigned_url_of_the_bucket(cluster: Cluster):
    """A ``url`` answer of A points into the bucket, signed (SigV4, verified here) for
    NANOGATE_URL_TTL seconds from now; a plain GET fetches the PNG, and the object is private:
    the same URL without its signature is refused by the store.

    moto 5.2.1 checks neither a presigned URL's signature nor its expiry (an expired or tampered
    URL still downloads), so the expiry is verified from the signed parameters instead: what AWS
    S3 and other stores enforce is X-Amz-Date + X-Amz-Expires, under the signature checked here."""
    name, secret = new_key(cluster)
    before = datetime.now(timezone.utc).replace(microsecond=0)
    answer = generate(cluster.a, secret)
    assert answer.status == 200, answer.body[:500]
    url = answer.json()["data"][0]["url"]

    parts = urllib.parse.urlsplit(url)
    params = dict(urllib.parse.parse_qsl(parts.query))
    assert f"{parts.scheme}://{parts.netloc}" == cluster.s3.endpoint, url
    assert parts.path.startswith(f"/{cluster.s3.bucket}/{cluster.prefix}/") and parts.path.endswith(".png"), url
    assert params.get("X-Amz-Algorithm") == "AWS4-HMAC-SHA256", params
    assert params.get("X-Amz-Expires") == str(URL_TTL), params
    assert params.get("X-Amz-SignedHeaders") == "host", params
    assert params["X-Amz-Credential"] == f"{cluster.s3.access_key}/{params['X-Amz-Date'][:8]}/{cluster.s3.region}/s3/aws4_request", params
    signed_at = datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    assert before.timestamp() - 5 <= signed_at.timestamp() <= time.time() + 5, (before, signed_at)
    assert re.fullmatch(r"[0-9a-f]{64}", params.get("X-Amz-Signature", "")), params
    assert presigned_signature(url, cluster.s3.secret_key) == params["X-Amz-Signature"], "the store would refuse this signature"

    status, data = fetch(url)
    assert status == 200, data[:300]
    assert png_size(data) == (1024, 1024)
    unsigned, _ = fetch(f"{parts.scheme}://{parts.netloc}{parts.path}")
    assert unsigned == 403, f"the image is readable without a signature ({unsigned})"
    head = cluster.s3.client().head_object(Bucket=cluster.s3.bucket, Key=parts.path.split("/", 2)[2])
    assert head["ContentType"] == "image/png" and head["ContentLength"] == len(data), head


def test_expired_images_are_swept_from_the_bucket(cluster: Cluster, nanogate_bin: Path):
    """With a 2 s TTL, an instance's image is in the bucket at once and gone from it (swept,
    only names NanoGate writes) a few seconds later: the presigned URL then gets the store's
    404. An object of someone else's under the same prefix is left alone."""
    prefix = f"sweep-{uuid.uuid4().hex[:8]}"
    s3 = cluster.s3.client()
    s3.put_object(Bucket=cluster.s3.bucket, Key=f"{prefix}/not-ours.txt", Body=b"keep me")
    name, secret = new_key(cluster)
    with instance(cluster, nanogate_bin, "sweeper", NANOGATE_URL_TTL="2", **cluster.s3.gateway_env(prefix)) as sweeper:
        answer = generate(sweeper, secret)
        assert answer.status == 200, answer.body[:500]
        url = answer.json()["data"][0]["url"]
        assert fetch(url)[0] == 200
        wait_for(lambda: fetch(url)[0] == 404, 20, "the expired image was swept from the bucket")
        keys = [item["Key"] for item in s3.list_objects_v2(Bucket=cluster.s3.bucket, Prefix=prefix + "/").get("Contents", [])]
        assert keys == [f"{prefix}/not-ours.txt"], keys
        sweeper.proc.kill()


def test_a_shared_folder_and_secret_serve_each_others_urls(cluster: Cluster, nanogate_bin: Path, tmp_path: Path):
    """Without a bucket: one folder (an NFS mount in production) and one NANOGATE_URL_SECRET on
    both instances; a URL made by one is a gateway URL the other serves, and a signature made
    with another secret is refused."""
    shared = tmp_path / "shared-images"
    base = {name: value for name, value in cluster.env.items() if not name.startswith("AWS_") and name != "NANOGATE_IMAGE_STORE"}
    secret = "s" * 48
    envs = {
        name: {**base, "NANOGATE_IMAGE_STORE": str(shared), "NANOGATE_URL_SECRET": secret, "NANOGATE_INSTANCE_ID": f"instance-{name}"}
        for name in ("nfs-a", "nfs-b")
    }
    _, key = new_key(cluster)
    with instances(nanogate_bin, cluster.config, cluster.root / "nfs", envs) as started:
        first, second = started["nfs-a"], started["nfs-b"]
        answer = generate(first, key)
        assert answer.status == 200, answer.body[:300]
        url = answer.json()["data"][0]["url"]
        assert url.startswith(first.root + "/v1/files/images/"), url
        status, data = fetch(url.replace(first.root, second.root))
        assert status == 200 and png_size(data) == (1024, 1024)
        forged = re.sub(r"signature=[^&]+", "signature=" + "A" * 43, url.replace(first.root, second.root))
        assert fetch(forged)[0] == 403
        assert len(list(shared.iterdir())) == 1, "both instances keep images in the one folder"


# ---------------------------------------------------------------------------------------------
# 2. Idempotent retries across instances


def test_idempotent_retry_on_the_other_instance(cluster: Cluster):
    """Sent to A, then the same to B: B answers A's exact body (Idempotent-Replayed), the key is
    charged once with one usage row, and the replayed URL downloads."""
    name, secret = new_key(cluster, credit_usd=5)
    headers = {"Idempotency-Key": f"idem-{uuid.uuid4().hex}"}
    first = generate(cluster.a, secret, "an idempotent banana", headers)
    assert first.status == 200, first.body[:500]
    again = generate(cluster.b, secret, "an idempotent banana", headers)
    assert again.status == 200, again.body[:500]
    assert again.body == first.body, "B did not return A's answer"
    assert again.headers.get("idempotent-replayed") == "true", again.headers
    status, data = fetch(again.json()["data"][0]["url"])
    assert status == 200 and png_size(data) == (1024, 1024)

    reused = generate(cluster.b, secret, "another banana", headers)
    assert reused.status == 409 and error_code(reused) == "idempotency_key_reused", reused.body[:300]

    # A later request on B, settled: a wrong second charge of the replay would have been
    # written before it (the replay's answer ended first).
    later = generate(cluster.b, secret, "a later banana", {})
    assert later.status == 200, later.body[:300]
    key = settled(cluster.b, name)
    later_id = later.headers["x-request-id"]

    def with_later_row():
        rows = usage_of(cluster.a, name)
        return rows if any(row["request_id"] == later_id for row in rows) else None

    rows = wait_for(with_later_row, 15, "the later request's row")
    charged = [row for row in rows if row["status"] == 200]
    assert len(charged) == 2, rows
    assert key["spent_usd"] == pytest.approx(sum(row["cost_usd"] for row in charged)) and key["spent_usd"] > 0, (key, charged)


# ---------------------------------------------------------------------------------------------
# 3. Thought signatures across instances


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
def test_second_chat_turn_on_the_other_instance_keeps_its_signatures(cluster: Cluster, upstream: Upstream, response_format: str):
    """Turn 1 of a Nano Banana Pro chat on A, turn 2 (the history as plain content, as OpenAI
    clients send it) on B: B reads the earlier image (from the bucket, for URL answers), finds
    the thought signatures A stored, and sends Google exactly those that Google issued on turn 1,
    not the bypass value for history it never produced."""
    _, secret = new_key(cluster)
    trace = f"{TRACE}{uuid.uuid4().hex[:8]}"
    first_text, second_text = f"draw a banana on the moon {trace}-1", f"now make the banana blue {trace}-2"
    messages = [{"role": "user", "content": first_text}]
    clients = [openai.OpenAI(api_key=secret, base_url=served.base_url, timeout=CLIENT_TIMEOUT, max_retries=0) for served in (cluster.a, cluster.b)]

    replies = []
    for turn, (client, text) in enumerate(zip(clients, (first_text, second_text))):
        if turn:
            messages += [{"role": "assistant", "content": replies[-1].content}, {"role": "user", "content": text}]
        raw = client.chat.completions.with_raw_response.create(
            model="nano-banana-pro", messages=messages, extra_body={"response_format": response_format}
        )
        assert raw.headers.get("x-nanogate-dropped-images") is None, f"turn {turn + 1} dropped an image"
        completion = raw.parse()
        choice = completion.choices[0]
        assert choice.finish_reason == "stop", f"turn {turn + 1}: {choice}"
        urls = markdown_urls(choice.message.content)
        assert len(urls) == 1, f"turn {turn + 1}: {choice.message.content[:300]}"
        if response_format == "url":
            assert urls[0].startswith(f"{cluster.s3.endpoint}/{cluster.s3.bucket}/{cluster.prefix}/"), urls[0][:200]
        else:
            assert urls[0].startswith("data:image/png;base64,"), urls[0][:40]
        details = completion.usage.model_dump().get("prompt_tokens_details") or {}
        assert details.get("image_tokens") == turn * PRO_INPUT_TOKENS, f"turn {turn + 1}: the earlier image did not go back to Google: {details}"
        replies.append(choice.message)

    issued = upstream.call_with(f"{trace}-1").issued
    assert issued, "the emulator issued no signatures on turn 1"
    second = upstream.call_with(f"{trace}-2").body
    model_turns = [content for content in second["contents"] if content.get("role") == "model"]
    assert len(model_turns) == 1, second["contents"]
    parts = model_turns[0]["parts"]
    sent = {i: part.get("thoughtSignature") or part.get("thought_signature") for i, part in enumerate(parts)}
    image_parts = [i for i, part in enumerate(parts) if "inlineData" in part or "inline_data" in part]
    assert image_parts, f"the earlier image is not in the model turn: {[sorted(p) for p in parts]}"
    for i in image_parts + [0]:
        assert sent[i], f"part {i} of the model turn went to Google without a thought signature"
        assert sent[i] not in BYPASS_SIGNATURES, f"part {i} got the bypass value: B did not find A's signatures"
        assert sent[i] in issued, f"part {i} carries a signature Google never issued: {sent[i]!r}"


# ---------------------------------------------------------------------------------------------
# 4. Credit under concurrency across instances


def test_parallel_requests_on_both_never_overspend(cluster: Cluster):
    """50 generations at once, alternating A and B, against a key whose credit covers a few:
    the others get 429 insufficient_quota, spent ≤ credit, and nothing stays reserved."""
    credit = 0.2
    name, secret = new_key(cluster, credit_usd=credit)
    targets = [cluster.a, cluster.b] * 25

    def one(served: Served) -> tuple[int, str]:
        answer = generate(served, secret, "a crowded banana [emulate:slow=1500]")
        return answer.status, "" if answer.status == 200 else error_code(answer)

    with ThreadPoolExecutor(len(targets)) as pool:
        outcomes = list(pool.map(one, targets))

    assert set(outcomes) <= {(200, ""), (429, "insufficient_quota")}, outcomes
    successes = outcomes.count((200, ""))
    assert successes >= 1, outcomes
    key = settled(cluster.a, name)
    charged = [row for row in usage_of(cluster.b, name) if row["status"] == 200]
    assert len(charged) == successes, (successes, charged)
    price = max(row["cost_usd"] for row in charged)
    assert successes * price <= credit + 1e-9, (successes, price)
    assert key["spent_usd"] <= credit, key
    assert key["spent_usd"] == pytest.approx(sum(row["cost_usd"] for row in charged)), key
    assert key["balance_usd"] == pytest.approx(credit - key["spent_usd"]), key


# ---------------------------------------------------------------------------------------------
# 5. Revocation and 6. RPM across instances


def test_key_revoked_on_a_is_refused_by_b(cluster: Cluster, nanogate_bin: Path, tmp_path: Path):
    """A key made with the CLI (on the database, from a data dir no instance uses) works on B;
    revoked through A's admin API it is refused by A on the very next request, and by B (which
    had it cached) within the key cache's bound of one second."""
    name = f"inst-{uuid.uuid4().hex[:10]}"
    (tmp_path / "cli-data").mkdir()
    created = json.loads(ok(cli(
        nanogate_bin, "keys", "create", "--name", name, "--json", "--data-dir", str(tmp_path / "cli-data"),
        env={"NANOGATE_DATABASE_URL": cluster.database},
    )))
    secret = created["secret"]
    assert generate(cluster.b, secret).status == 200
    assert generate(cluster.b, secret).status == 200  # now served from B's key cache

    status, body = admin(cluster.a, "DELETE", f"keys/{name}")
    revoked = time.monotonic()
    assert status == 204, body
    assert generate(cluster.a, secret).status == 401
    time.sleep(max(0.0, revoked + KEY_CACHE_SECONDS - time.monotonic()))
    refused = generate(cluster.b, secret)
    assert refused.status == 401, refused.body[:300]


def test_migrate_as_a_deploy_step_while_serving(cluster: Cluster, nanogate_bin: Path, tmp_path: Path):
    """``nanogate migrate`` on the database A and B already brought up to date (both migrated it
    at once on start) succeeds and changes nothing they notice."""
    (tmp_path / "data").mkdir()
    ok(cli(nanogate_bin, "migrate", "--data-dir", str(tmp_path / "data"), env={"NANOGATE_DATABASE_URL": cluster.database}))
    _, secret = new_key(cluster)
    assert generate(cluster.b, secret).status == 200
    assert ready(cluster.a)[0] == 200


def test_rpm_limit_counts_both_instances(cluster: Cluster):
    """rpm=4, eight requests alternating A and B within the minute: four answered, four 429."""
    _, secret = new_key(cluster, rpm=4)
    answers = [generate(served, secret) for served in [cluster.a, cluster.b] * 4]
    assert [a.status for a in answers] == [200] * 4 + [429] * 4, [(a.status, a.body[:120]) for a in answers]
    for answer in answers[4:]:
        assert error_code(answer) == "rate_limit_exceeded", answer.body[:300]
        assert int(answer.headers.get("retry-after", "0")) >= 1, answer.headers


# ---------------------------------------------------------------------------------------------
# 7. An instance killed mid-request


def test_reservation_of_a_killed_instance_is_released_by_the_others(cluster: Cluster, nanogate_bin: Path):
    """Instance C is killed (SIGKILL) while its request waits on a slow Google: its hold stays,
    then A and B release it once its lease (3 s) ran out; nothing is charged."""
    name, secret = new_key(cluster, credit_usd=1)
    with instance(cluster, nanogate_bin, "c") as c:

        def slow_request() -> None:
            with contextlib.suppress(OSError):  # C dies under it
                generate(c, secret, "a slow banana [emulate:slow=8000]")

        threading.Thread(target=slow_request, daemon=True).start()
        wait_for(lambda: key_view(cluster.a, name)["reserved_usd"] > 0, 15, "C's request reserved credit")
        c.proc.send_signal(signal.SIGKILL)
        c.proc.wait(timeout=15)
        killed_at = time.monotonic()
        assert key_view(cluster.b, name)["reserved_usd"] > 0, "the hold went away with the process"

    key = settled(cluster.b, name)
    released_after = time.monotonic() - killed_at
    assert key["spent_usd"] == 0 and key["balance_usd"] == 1, key
    assert not [row for row in usage_of(cluster.a, name) if row["status"] == 200]
    assert released_after < LEASE + 10, f"released {released_after:.1f}s after the kill"


def test_a_job_is_taken_over_when_its_instance_dies_and_read_anywhere(cluster: Cluster, nanogate_bin: Path):
    """A background job is one row of a shared database. On a database of its own, so C is the
    only instance that can run it: C is killed (SIGKILL) while the job waits on Google; D and E
    start, one of them takes it over once C's lease ran out and runs it to the end, both answer
    for it, and it is charged once."""
    name = f"nanogate_jobs_{uuid.uuid4().hex[:8]}"
    psql(PG_URL, f'CREATE DATABASE "{name}"')
    env = {**cluster.env, "NANOGATE_DATABASE_URL": database_url(PG_URL, name)}
    try:
        with serve(nanogate_bin, cluster.config, cluster.root / "job-c", env={**env, "NANOGATE_INSTANCE_ID": "instance-job-c"}) as c:
            status, body = admin(c, "POST", "keys", {"name": "jobs", "credit_usd": 1})
            assert status == 201, body
            secret = json.loads(body)["secret"]
            submitted = http("POST", c.root + GENERATIONS, {**bearer(secret), "Prefer": "respond-async"},
                             {"model": "nano-banana", "prompt": "a slow banana [emulate:slow=5000]", "response_format": "url"})
            assert submitted.status == 202, submitted.body[:300]
            job_id = submitted.json()["id"]
            wait_for(lambda: http("GET", f"{c.root}/v1/images/jobs/{job_id}", bearer(secret)).json()["status"] == "running", 15, "C ran the job")
            c.proc.send_signal(signal.SIGKILL)
            c.proc.wait(timeout=15)
        envs = {other: {**env, "NANOGATE_INSTANCE_ID": f"instance-{other}"} for other in ("job-d", "job-e")}
        with instances(nanogate_bin, cluster.config, cluster.root, envs) as started:
            d, e = started["job-d"], started["job-e"]

            def finished():
                job = http("GET", f"{d.root}/v1/images/jobs/{job_id}", bearer(secret)).json()
                return job if job["status"] in ("succeeded", "failed") else None

            job = wait_for(finished, 60, "D or E finished the job")
            assert job["status"] == "succeeded" and job["attempts"] == 2, job
            assert http("GET", f"{e.root}/v1/images/jobs/{job_id}", bearer(secret)).json()["result"] == job["result"]
            status, data = fetch(job["result"]["data"][0]["url"])
            assert status == 200 and png_size(data) == (1024, 1024)
            key = settled(e, "jobs")
            charged = [row for row in usage_of(d, "jobs") if row["cost_usd"] != 0]
            assert len(charged) == 1 and abs(key["spent_usd"] - charged[0]["cost_usd"]) < 1e-9, (key, charged)
    finally:
        psql(PG_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------------------------------------
# 8. Readiness


def ready(served: Served) -> tuple[int, dict]:
    answer = http("GET", served.root + "/ready")
    return answer.status, answer.json()


def test_ready_names_the_part_that_fails(cluster: Cluster, nanogate_bin: Path):
    """/ready is 200 on A and B; an instance whose bucket went away (deleted under it) answers
    503 naming the image store, while /health still says the process lives.

    (Stopping the S3 server instead works too, but each /ready then takes about 5 s: the HTTP
    client retries the refused connection until its connect timeout.)"""
    for served in (cluster.a, cluster.b):
        status, report = ready(served)
        assert status == 200, report
        assert {part: report[part] for part in ("status", "database", "image_store")} == {"status": "ready", "database": "ok", "image_store": "ok"}, report
        assert report["models"]["nano-banana-pro"] == "gemini-3-pro-image", report

    doomed = cluster.s3._replace(bucket=f"nanogate-ready-{uuid.uuid4().hex[:8]}")
    doomed.client().create_bucket(Bucket=doomed.bucket)
    with instance(cluster, nanogate_bin, "d", **doomed.gateway_env("ready")) as d:
        wait_for(lambda: ready(d)[0] == 200, 10, "D was ready")
        doomed.client().delete_bucket(Bucket=doomed.bucket)
        status, report = ready(d)
        assert status == 503, report
        assert report["status"] == "not_ready" and report["database"] == "ok", report
        assert isinstance(report["image_store"], str) and report["image_store"] not in ("", "ok"), report
        health = http("GET", d.root + "/health")
        assert health.status == 200 and health.body.strip() == b"ok"
        d.proc.kill()  # its graceful stop would take seconds, and nothing of it is checked here


# ---------------------------------------------------------------------------------------------
# 9. nginx in front (deploy/nginx.conf)


def generations_served(served: Served) -> float:
    """The instance's own count of answered generations (its /metrics)."""
    answer = http("GET", served.root + "/metrics")
    assert answer.status == 200, answer.body[:300]
    return total(parse_metrics(answer.body.decode())[1], "nanogate_requests_total", route=GENERATIONS, status="200")


def test_nginx_spreads_requests_and_streams(cluster: Cluster):
    """Through nginx with deploy/nginx.conf: generations succeed and both instances answered
    some (their own /metrics say so; nginx's access log names the instance of each request); a
    streamed chat comes through as a stream: its first bytes (the role chunk or a keep-alive
    comment) arrive while Google is still working, the image and [DONE] seconds later."""
    with running_nginx([cluster.a.port, cluster.b.port]) as (root, prefix):
        _, secret = new_key(cluster)
        before = [generations_served(served) for served in (cluster.a, cluster.b)]
        for _ in range(4):
            answer = http("POST", root + GENERATIONS, bearer(secret), {"model": "nano-banana", "prompt": "a balanced banana", "response_format": "url"})
            assert answer.status == 200, answer.body[:300]
            status, data = fetch(answer.json()["data"][0]["url"])
            assert status == 200 and data[:8] == PNG_SIGNATURE
        def counted() -> list[float] | None:
            now = [generations_served(served) for served in (cluster.a, cluster.b)]
            return now if sum(now) - sum(before) >= 4 else None

        after = wait_for(counted, 10, "the instances counted the four generations")
        log = (prefix / "access.log").read_text()
        assert after[0] > before[0] and after[1] > before[1], f"one instance got everything: {before} -> {after}\n{log}"

        # A stream: keep-alive comments (NANOGATE_KEEPALIVE=1) flow while the emulator waits 3 s.
        connection = HTTPConnection("127.0.0.1", int(root.rsplit(":", 1)[1]), timeout=60)
        body = {"model": "nano-banana", "stream": True, "messages": [{"role": "user", "content": "a streamed banana [emulate:slow=3000]"}]}
        started = time.monotonic()
        connection.request("POST", CHAT, json.dumps(body), {**bearer(secret), "Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200, response.read()[:300]
        assert response.getheader("Content-Type", "").startswith("text/event-stream")
        lines: list[tuple[float, str]] = []
        while line := response.readline():
            lines.append((time.monotonic() - started, line.decode().rstrip("\r\n")))
        connection.close()
        data = [(at, text[5:].strip()) for at, text in lines if text.startswith("data:")]
        assert data and data[-1][1] == "[DONE]", lines[-5:]
        first_byte, done = lines[0][0], data[-1][0]
        assert done - first_byte >= 1.5, f"nginx held the stream back: first line at {first_byte:.1f}s, [DONE] at {done:.1f}s"
        content = "".join(
            (json.loads(payload)["choices"] or [{}])[0].get("delta", {}).get("content") or ""
            for _, payload in data[:-1]
        )
        urls = markdown_urls(content)
        assert len(urls) == 1, content[:300]
        status, image = fetch(urls[0])
        assert status == 200 and image[:8] == PNG_SIGNATURE


def test_a_console_session_made_on_a_works_on_b_and_ends_everywhere(cluster: Cluster):
    """The console's sessions live in PostgreSQL: a key holder signed in through A browses B's
    pages with the same cookie; signing out on B ends it on A; a new session ends on both when
    the key is revoked."""
    name, secret = new_key(cluster)

    def sign_in(served: Served) -> str:
        answer = http("POST", served.root + "/console/signin", {"X-NanoGate-Console": "1", "Origin": served.root}, {"token": secret})
        assert answer.status == 200, answer.body[:300]
        cookie = answer.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        return cookie.split(";", 1)[0]

    def usage_page(served: Served, cookie: str) -> str:
        # A session that ended answers 303 to the sign-in page, which urllib follows.
        answer = http("GET", served.root + "/console/usage", {"Cookie": cookie})
        assert answer.status == 200
        return answer.body.decode()

    cookie = sign_in(cluster.a)
    page = usage_page(cluster.b, cookie)
    assert "My usage" in page and f"Key {name}" in page, page[:500]
    out = http("POST", cluster.b.root + "/console/signout", {"X-NanoGate-Console": "1", "Origin": cluster.b.root, "Cookie": cookie})
    assert out.status == 200
    assert "My usage" not in usage_page(cluster.a, cookie) and 'id="token"' in usage_page(cluster.a, cookie)

    cookie = sign_in(cluster.b)
    assert "My usage" in usage_page(cluster.a, cookie)
    status, body = admin(cluster.a, "DELETE", f"keys/{name}")
    assert status == 204, body
    for served in (cluster.a, cluster.b):
        assert 'id="token"' in usage_page(served, cookie), "revoking the key ends its console sessions on every instance"
