"""The embedded database under concurrent writers: separate processes (like the web server,
the downloader and management commands) writing at once to the same SQLite file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, manage

pytestmark = pytest.mark.slow

WRITER = """
import sys
import django
django.setup()
from django.db import transaction
from mlxmanager.audit.models import RequestLog
from mlxmanager.audit.services import rollup_add
from mlxmanager.accounts.models import ApiKey

n, count = int(sys.argv[1]), int(sys.argv[2])
for i in range(count):
    # The recorder's write: a request row and its hourly rollup (an upsert every writer hits).
    with transaction.atomic():
        row = RequestLog.objects.create(endpoint="/v1/chat/completions", status=200, username="shared",
                                        requested_model="m", prompt_tokens=3, completion_tokens=5)
        rollup_add([row])
    # And a read-modify-write of one shared row, as key touches and settings saves do.
    with transaction.atomic():
        ApiKey.objects.filter(name="shared").update(name="shared")
print("done", n)
"""


def test_concurrent_writers_never_see_database_is_locked(tmp_path: Path) -> None:
    env = {**os.environ, "MLXM_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "mlxmanager.settings"}
    env.pop("DATABASE_URL", None)
    manage("migrate", "--noinput", "-v0", env=env)
    writers, per_writer = 6, 150
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(n), str(per_writer)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(writers)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert "locked" not in err
        assert out.startswith("done")

    check = (
        "from django.db.models import Sum\n"
        "from mlxmanager.audit.models import RequestHourly, RequestLog\n"
        "print(RequestLog.objects.count(), RequestHourly.objects.aggregate(n=Sum('requests'))['n'])\n"
    )
    rows, rolled_up = manage("shell", "-c", check, env=env).strip().splitlines()[-1].split()
    assert int(rows) == writers * per_writer
    assert int(rolled_up) == writers * per_writer
