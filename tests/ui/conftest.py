"""A dashboard app on a runs folder and a data folder of the test's own, with a client that holds the token."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lorakit.run import RunFolder
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


@pytest.fixture
def grpo_run(folders) -> RunFolder:
    """Three logged steps of GRPO on a tiny model, written into the dashboard's runs folder."""
    from lorakit.train import recipe
    from tests.conftest import make_tiny_model_dir
    from tests.train.test_grpo_runs import grpo_config

    runs, data = folders
    model = make_tiny_model_dir(data / "model")
    cfg = grpo_config(model, data / "grpo", "train.max_steps=3", "train.batch_size=2", "grpo.log_completions=1",
                      f"output_dir={runs / 'g'}")
    recipe.run(cfg)
    return RunFolder(runs / "g")
