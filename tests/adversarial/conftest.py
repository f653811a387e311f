"""Fixtures for the adversarial suite (in-process app on real files and SQLite)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from secretsd.controlplane.app import AppConfig, create_app


@dataclass
class App:
    data: Path
    app: FastAPI
    client: TestClient
    token: str


@pytest.fixture
def inproc(tmp_path: Path) -> Iterator[App]:
    token = "adv-" + uuid.uuid4().hex
    data = tmp_path / "data"
    app = create_app(AppConfig(data_dir=data, admin_token=token))
    client = TestClient(app, headers={"Authorization": f"Bearer {token}"}, raise_server_exceptions=False)
    try:
        yield App(data, app, client, token)
    finally:
        client.close()
        app.state.cp.store.close()
