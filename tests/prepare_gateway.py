"""A fresh gateway's data directory, made ready in one process (run by tests/conftest.py's
`start_gateway` as `python tests/prepare_gateway.py`): the same management commands a user runs
(`migrate`, `prepare_demo_models`, `create_admin`, `create_api_key`), without paying Django's and
the app's import four times per gateway. Prints the admin's API key last when `--admin` is given.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", required=True, help="where the demo models are built")
    parser.add_argument("--admin", action="store_true", help="create 'admin' (password on stdin) and a key")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mlxmanager.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", "--noinput", verbosity=0)
    call_command("prepare_demo_models", "--data-dir", args.shared, stdout=io.StringIO())
    if args.admin:
        call_command("create_admin", "--username", "admin", "--password-stdin", stdout=io.StringIO())
        out = io.StringIO()
        call_command("create_api_key", "--username", "admin", "--name", "tests", stdout=out)
        print(out.getvalue().strip().splitlines()[-1])


if __name__ == "__main__":
    main()
