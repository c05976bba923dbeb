"""The data directory's permissions: the SQLite database (and its -wal), the secret key and the
credentials key are readable by their owner only, on a fresh install and on an old one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

# Run as a fresh process (settings are read once per process): migrate, then write with the
# connection still open, so the -wal file exists when the modes are listed.
STARTUP = """
import json, os, stat, sys
from pathlib import Path
import django
django.setup()
from django.core.management import call_command
from django.db import connection
if sys.argv[1] == "migrate":
    call_command("migrate", verbosity=0)
    with connection.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS perm_probe (x integer)")
        cur.execute("INSERT INTO perm_probe VALUES (1)")
d = Path(os.environ["MLXM_DATA_DIR"])
print(json.dumps({p.name: stat.S_IMODE(p.stat().st_mode) for p in [d, *d.iterdir()]}))
"""


def _start(data_dir: Path, step: str) -> dict[str, int]:
    env = {**os.environ, "MLXM_DATA_DIR": str(data_dir), "DJANGO_SETTINGS_MODULE": "mlxmanager.settings"}
    env.pop("DATABASE_URL", None)
    env.pop("MLXM_CREDENTIALS_KEY_FILE", None)
    # The usual login umask: files would be 0644 and folders 0755 unless the product says otherwise.
    out = subprocess.run(
        [sys.executable, "-c", STARTUP, step],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, umask=0o022,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_fresh_data_dir_is_private_and_so_is_every_file_in_it(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    modes = _start(data, "migrate")
    name = data.name
    assert modes.pop(name) == 0o700
    assert {"mlxmanager.sqlite3", "mlxmanager.sqlite3-wal", "secret_key"} <= set(modes)
    for entry, mode in modes.items():
        expected = 0o700 if (data / entry).is_dir() else 0o600
        assert mode == expected, f"{entry}: {oct(mode)}"


def test_an_existing_world_readable_install_is_fixed_at_start(tmp_path: Path) -> None:
    data = tmp_path / "old"
    data.mkdir()
    data.chmod(0o755)
    db = data / "mlxmanager.sqlite3"
    db.write_bytes(b"")
    db.chmod(0o644)
    wal = data / "mlxmanager.sqlite3-wal"
    wal.write_bytes(b"")
    wal.chmod(0o664)
    modes = _start(data, "settings")
    assert modes["old"] == 0o700
    assert modes["mlxmanager.sqlite3"] == 0o600
    assert modes["mlxmanager.sqlite3-wal"] == 0o600


def test_priority_weights(monkeypatch: Any) -> None:
    from mlxmanager import config

    monkeypatch.setenv("MLXM_PRIORITY_WEIGHTS", "")
    assert config.priority_weights() == {}
    monkeypatch.setenv("MLXM_PRIORITY_WEIGHTS", " admin=2, member=0.5 ")
    assert config.priority_weights() == {"admin": 2.0, "member": 0.5}
    for bad in ("admin", "admin=0", "admin=lots", "boss=2", "admin=inf"):
        monkeypatch.setenv("MLXM_PRIORITY_WEIGHTS", bad)
        with pytest.raises(ValueError, match="MLXM_PRIORITY_WEIGHTS"):
            config.priority_weights()
