from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from mlxmanager.accounts.services import api_key_create, expiry_after
from mlxmanager.errors import DomainError


class Command(BaseCommand):
    help = "Create an API key for a user; the key is the last line of output."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", required=True)
        parser.add_argument("--name", required=True)
        parser.add_argument("--expires-days", type=float, default=None, help="expire after this many days")
        parser.add_argument(
            "--models", default="", help="comma-separated model names this key may use (default: all)"
        )
        parser.add_argument("--rpm", type=int, default=None, help="requests per minute (default: no limit)")
        parser.add_argument(
            "--tokens-per-day", type=int, default=None, help="prompt + completion tokens per UTC day"
        )

    def handle(self, *args: object, **opts: object) -> None:
        try:
            user = get_user_model().objects.get(username=opts["username"])
        except get_user_model().DoesNotExist as exc:
            raise CommandError(f"no user '{opts['username']}'") from exc
        try:
            key, secret = api_key_create(
                user=user,
                name=str(opts["name"]),
                expires_at=expiry_after(opts["expires_days"]),  # type: ignore[arg-type]
                allowed_models=[m for m in str(opts["models"]).split(",") if m.strip()],
                rpm_limit=opts["rpm"],  # type: ignore[arg-type]
                tokens_per_day=opts["tokens_per_day"],  # type: ignore[arg-type]
            )
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"Created API key '{key.name}' for {user.get_username()}. It is shown only once:")
        self.stdout.write(secret)
