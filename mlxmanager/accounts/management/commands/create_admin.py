import sys

from django.core.management.base import BaseCommand, CommandError, CommandParser

from mlxmanager.accounts.services import user_create_admin
from mlxmanager.errors import DomainError


class Command(BaseCommand):
    help = "Create an admin user non-interactively (the password is read from stdin)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", required=True)
        parser.add_argument("--email", default="")
        parser.add_argument(
            "--password-stdin",
            action="store_true",
            required=True,
            help="read the password from standard input",
        )

    def handle(self, *args: object, **opts: object) -> None:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CommandError("no password on standard input")
        try:
            user = user_create_admin(
                username=str(opts["username"]), password=password, email=str(opts["email"])
            )
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"Created admin '{user.get_username()}'.")
