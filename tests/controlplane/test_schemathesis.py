"""Schemathesis against /openapi.json: no generated request may cause a server error.

The app is built at import (schemathesis parametrizes at collection time) in
a temporary data folder, with a recording runtime so restart routes run too.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from starlette.testclient import TestClient

from secretsd.controlplane.app import AppConfig, create_app

from .conftest import TOKEN, RecordingRuntime, auth

_DATA = Path(tempfile.mkdtemp(prefix="secretsd-schemathesis-"))
atexit.register(shutil.rmtree, _DATA, True)
_APP = create_app(AppConfig(data_dir=_DATA, admin_token=TOKEN), runtime=RecordingRuntime(_DATA))
with TestClient(_APP, headers=auth()) as _c:
    _c.post("/cp/admin/workspaces", json={"id": "w1"})
    _c.post("/cp/admin/workspaces/w1/env", json={"env": {"A": "1"}})
    _c.post("/cp/admin/env", json={"env": {"G": "1"}})

schema = schemathesis.openapi.from_asgi("/openapi.json", _APP, headers=auth())


@schema.parametrize()
@settings(max_examples=10, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_no_server_error(case) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate(headers=auth(), checks=[not_a_server_error])
