"""Who may use the dashboard and what it may read: the token, the Host header, the allowed folders."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from lorakit.cli import app as cli
from lorakit.ui.app import SCRIPTS, create_app
from lorakit.ui.guard import Access, Refused, is_loopback
from tests.ui.conftest import LOCAL


def test_without_the_token_every_endpoint_is_refused(access):
    bare = TestClient(create_app(access), base_url=LOCAL)
    for path in ("/", "/page.js", "/chart.js", "/nope.js", "/api/runs", "/api/form", "/api/text",
                 "/api/runs/x/metrics"):
        response = bare.get(path)
        assert response.status_code == 401, path
        assert "token" in response.json()["error"]
    assert bare.get("/api/runs", params={"token": "wrong"}).status_code == 401
    bare.cookies.set("lorakit_ui_7860", "wrong")
    assert bare.get("/api/runs").status_code == 401
    assert bare.post("/api/runs", json={"name": "x"}).status_code == 401


def test_the_token_opens_it_as_a_query_a_cookie_or_a_bearer_header(access):
    bare = TestClient(create_app(access), base_url=LOCAL)
    first = bare.get("/", params={"token": access.token}, follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/"  # the token leaves the address bar
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    assert bare.get("/api/runs").status_code == 200  # the cookie now carries it
    assert cookie.startswith("lorakit_ui_7860=")  # named after the port: two dashboards keep their own
    header = TestClient(create_app(access), base_url=LOCAL)
    assert header.get("/api/runs", headers={"Authorization": f"Bearer {access.token}"}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:7860", "192.168.1.5:7860", "127.0.0.1.nip.io"])
def test_a_non_loopback_host_header_is_refused_even_with_the_token(access, host):
    client = TestClient(create_app(access), base_url=LOCAL)
    response = client.get("/api/runs", headers={"Host": host, "Authorization": f"Bearer {access.token}"})
    assert response.status_code == 403
    assert "localhost" in response.json()["error"]


@pytest.mark.parametrize("host", ["localhost:7860", "127.0.0.1", "[::1]:7860"])
def test_loopback_host_headers_are_served(access, host):
    client = TestClient(create_app(access), base_url=LOCAL)
    assert client.get("/api/runs", headers={"Host": host, "Authorization": f"Bearer {access.token}"}).status_code == 200


def test_with_a_key_other_host_names_are_served_and_the_key_is_the_token(folders):
    access = Access(folders[0], [folders[1]], key="k-123")
    client = TestClient(create_app(access), base_url="http://dashboard.lan:7860")
    assert client.get("/api/runs").status_code == 401
    assert client.get("/api/runs", headers={"Authorization": "Bearer k-123"}).status_code == 200


def test_a_non_loopback_host_needs_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("LORAKIT_UI_KEY", raising=False)
    result = CliRunner().invoke(cli, ["ui", "--runs", str(tmp_path / "runs"), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "give --key" in result.output and "Traceback" not in result.output
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


def test_paths_outside_the_allowed_folders_are_refused(access, folders, tmp_path):
    runs, data = folders
    (data / "train.jsonl").write_text("{}\n")
    (tmp_path / "secret.jsonl").write_text("{}\n")
    assert access.path(data / "train.jsonl") == (data / "train.jsonl").resolve()
    assert access.path(str(runs / "a" / "b")) == (runs / "a" / "b").resolve()  # not there yet, but inside
    refused = [tmp_path / "secret.jsonl", "/etc/passwd", str(data / ".." / "secret.jsonl"),
               f"{runs}/../secret.jsonl", "~/.ssh/id_rsa", str(tmp_path)]
    os.symlink(tmp_path / "secret.jsonl", data / "link.jsonl")  # a link inside that leads outside
    os.symlink(tmp_path, data / "up")
    refused += [data / "link.jsonl", data / "up" / "secret.jsonl"]
    for given in refused:
        with pytest.raises(Refused, match="outside the folders"):
            access.path(given)


@pytest.mark.parametrize("name", ["..", ".", "../runs2", "a/b", ".ui", "..%2fetc", ""])
def test_a_run_name_is_one_folder_inside_the_runs_folder(access, name):
    with pytest.raises(Refused):
        access.run_path(name)


def test_endpoints_refuse_traversal_through_names_and_data_paths(client, folders, tmp_path):
    runs, _ = folders
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "lorakit.yaml").write_text("name: secret\n")
    os.symlink(tmp_path / "secret", runs / "sneaky")  # a run folder that is a link out of the runs folder
    for path in ("/api/runs/%2e%2e", "/api/runs/..%2Fsecret", "/api/runs/sneaky", "/api/runs/sneaky/metrics",
                 "/api/runs/sneaky/config.yaml", "/api/runs/%2e%2e/config.yaml"):
        response = client.get(path)
        assert response.status_code in (403, 404), path
        assert "secret" not in response.text or "not a run" in response.text or "outside" in response.text
    for train in ("/etc/passwd", str(tmp_path / "secret" / "lorakit.yaml"), "../secret/lorakit.yaml"):
        response = client.post("/api/config", json={"name": "r", "values": {"data.train": train}})
        assert response.status_code == 403, train
        assert "outside the folders" in response.json()["error"]
    response = client.post("/api/config", json={"name": "r", "values": {"model.name": "/etc"}})
    assert response.status_code == 403
    response = client.post("/api/config", json={"name": "../r", "values": {}})
    assert response.status_code == 400
    # The listing follows no link out either.
    assert [r["name"] for r in client.get("/api/runs").json()] == []


def test_the_page_and_its_scripts_are_served_and_nothing_else_by_name(client):
    assert "lorakit" in client.get("/").text
    for script in (f"/{name}.js" for name in SCRIPTS):
        response = client.get(script)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/javascript")
    assert client.get("/guard.js").status_code == 404
    assert client.get("/..%2Fguard.py.js").status_code == 404
