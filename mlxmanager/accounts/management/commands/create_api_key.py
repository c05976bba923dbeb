from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from mlxmanager.accounts.services import api_key_create
from mlxmanager.errors import DomainError


class Command(BaseCommand):
    help = "Create an API key for a user; the key is the last line of output."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", required=True)
        parser.add_argument("--name", required=True)

    def handle(self, *args: object, **opts: object) -> None:
        try:
            user = get_user_model().objects.get(username=opts["username"])
        except get_user_model().DoesNotExist as exc:
            raise CommandError(f"no user '{opts['username']}'") from exc
        try:
            key, secret = api_key_create(user=user, name=str(opts["name"]))
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"Created API key '{key.name}' for {user.get_username()}. It is shown only once:")
        self.stdout.write(secret)
