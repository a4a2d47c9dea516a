"""``nanogate keys`` against the running demo server's data dir, seen through the SDK."""

from __future__ import annotations

import openai
import pytest

PROMPT = "a banana on the moon"
LIST_HEADER = ["NAME", "GROUP", "PREFIX", "CREATED", "STATUS", "BALANCE"]


def create_key(cli, name: str, group: str | None = None) -> str:
    """Create a key with the CLI and return its secret (the last stdout line)."""
    args = ["keys", "create", "--name", name]
    if group is not None:
        args += ["--group", group]
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def list_keys(cli) -> tuple[str, dict[str, dict[str, str]]]:
    """Run ``keys list``; return its raw stdout and the rows keyed by name."""
    result = cli("keys", "list")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines[0].split("\t") == LIST_HEADER
    rows = {}
    for line in lines[1:]:
        cells = line.split("\t")
        assert len(cells) == len(LIST_HEADER), line
        rows[cells[0]] = dict(zip(LIST_HEADER, cells))
    return result.stdout + result.stderr, rows


def generate(client, **kwargs):
    """A small nano-banana request."""
    return client.images.generate(model="nano-banana", prompt=PROMPT, size="1:1", **kwargs)


def test_create_prints_secret_alone_on_last_line(cli, unique_name):
    """``keys create`` ends its output with the bare secret."""
    result = cli("keys", "create", "--name", unique_name)

    assert result.returncode == 0, result.stderr
    last = result.stdout.rstrip("\n").splitlines()[-1]
    assert last == last.strip() and " " not in last
    assert last.startswith("sk-ng-") and len(last) > len("sk-ng-") + 16
    assert result.stdout.count(last) == 1, "secret printed more than once"


def test_created_key_works_with_sdk(cli, make_client, unique_name):
    """A key created by the CLI is accepted at once by the running server."""
    secret = create_key(cli, unique_name)

    result = generate(make_client(secret), response_format="b64_json")

    assert result.data is not None and len(result.data) == 1
    assert result.data[0].b64_json


def test_list_shows_key_active_without_secret(cli, unique_name):
    """``keys list`` shows the new key active, with a prefix but never the secret."""
    secret = create_key(cli, unique_name, group="gemini")

    output, rows = list_keys(cli)

    assert secret not in output
    row = rows[unique_name]
    assert row["GROUP"] == "gemini"
    assert row["STATUS"] == "active"
    prefix = row["PREFIX"].rstrip("…").rstrip(".")
    assert prefix.startswith("sk-ng-") and secret.startswith(prefix)
    assert len(prefix) < len(secret)


def test_duplicate_name_fails(cli, unique_name):
    """Creating a second key with the same name exits non-zero and prints no secret."""
    create_key(cli, unique_name)

    result = cli("keys", "create", "--name", unique_name)

    assert result.returncode != 0
    assert "sk-ng-" not in result.stdout
    _, rows = list_keys(cli)
    assert list(rows).count(unique_name) == 1


def test_revoke_stops_key(cli, make_client, unique_name):
    """After ``keys revoke`` the SDK gets AuthenticationError and list says revoked."""
    secret = create_key(cli, unique_name)
    client = make_client(secret)
    assert generate(client, response_format="b64_json").data

    result = cli("keys", "revoke", unique_name)
    assert result.returncode == 0, result.stderr

    with pytest.raises(openai.AuthenticationError) as excinfo:
        generate(client, response_format="b64_json")
    assert excinfo.value.status_code == 401
    _, rows = list_keys(cli)
    assert rows[unique_name]["STATUS"].startswith("revoked ")


@pytest.mark.parametrize("group, field", [("gemini", "b64_json"), ("default", "url")])
def test_group_sets_default_response_format(cli, make_client, unique_name, group, field):
    """Without response_format, a gemini-group key gets base64 and a default-group key a URL."""
    secret = create_key(cli, unique_name, group=group)

    result = generate(make_client(secret))

    assert result.data is not None and len(result.data) == 1
    image = result.data[0]
    other = "url" if field == "b64_json" else "b64_json"
    assert getattr(image, field), f"expected {field}"
    assert getattr(image, other) is None
