"""`manage.py credentials_rotate_key`: a new encryption key, every secret re-sealed, no downtime.

With the key file: prepends a new key (old ones stay, so running processes and rows not yet
re-sealed keep working), then re-encrypts every credential. `--prune` afterwards drops the
keys no row uses any more. With `MLXM_CREDENTIALS_KEY`: put the new key first in the
variable (`new,old`) on every process, then run this command to re-encrypt.
"""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from mlxmanager.credentials import crypto
from mlxmanager.credentials.models import Credential
from mlxmanager.credentials.services import credentials_reencrypt
from mlxmanager.sso.models import OidcConfig


class Command(BaseCommand):
    help = "Rotate the credentials encryption key (key file) and re-encrypt every secret."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--reencrypt-only", action="store_true", help="re-seal under the current key")
        parser.add_argument("--prune", action="store_true", help="drop keys no credential uses any more")

    def handle(self, *args: Any, **opts: Any) -> None:
        from_env = bool(os.environ.get("MLXM_CREDENTIALS_KEY", "").strip())
        if opts["prune"]:
            if from_env:
                raise CommandError("keys come from MLXM_CREDENTIALS_KEY: edit the variable instead")
            used = set(Credential.objects.values_list("key_id", flat=True))
            used |= set(OidcConfig.objects.exclude(key_id="").values_list("key_id", flat=True))
            keep = [
                s for i, s in enumerate(crypto.key_file_secrets()) if i == 0 or crypto._derive(s).kid in used
            ]
            dropped = len(crypto.key_file_secrets()) - len(keep)
            crypto.write_key_file(keep)
            self.stdout.write(f"dropped {dropped} unused keys")
            return
        if not opts["reencrypt_only"]:
            if from_env:
                raise CommandError(
                    "keys come from MLXM_CREDENTIALS_KEY: set it to 'NEW,OLD' everywhere, then run "
                    "this command with --reencrypt-only"
                )
            crypto.prepend_key_file(crypto.new_secret())
            self.stdout.write(f"new key {crypto.keyring.current.kid} in {crypto.key_file()}")
        n = credentials_reencrypt()
        self.stdout.write(f"re-encrypted {n} credentials under key {crypto.keyring.current.kid}")
