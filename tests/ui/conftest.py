"""A dashboard app on a runs folder and a data folder of the test's own, with a client that holds the token."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lorakit.ui.app import create_app
from lorakit.ui.guard import Access

LOCAL = "http://127.0.0.1:7860"


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    runs, data = tmp_path / "runs", tmp_path / "data"
    runs.mkdir()
    data.mkdir()
    return runs, data


@pytest.fixture
def access(folders) -> Access:
    return Access(folders[0], [folders[1]])


@pytest.fixture
def client(access) -> TestClient:
    """Signed in as the page is: the URL's token traded for the cookie."""
    client = TestClient(create_app(access), base_url=LOCAL)
    assert client.get(f"/?token={access.token}", follow_redirects=False).status_code == 303
    return client
