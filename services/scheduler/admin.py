"""`python -m services.scheduler admin ...`: users and API tokens, straight in the database.

    admin create-user NAME [--email E] [--tier free|pro|plus|enterprise] [--admin]
    admin create-token USER [--name N] [--expires-in-days D] [--kind api|runner|pool]
    admin revoke-token TOKEN_ID_OR_TOKEN
    admin list-tokens USER

USER is a user's id or name. A new token is printed once and stored only as its sha256.
A pool token (for `python -m services.runner --pool`) is issued only to an administrator.
The database is the scheduler's (SCHEDULER_DATABASE_URL); it is migrated first.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import timedelta

from services.scheduler.config import Settings
from services.scheduler.core.tiers import TIERS
from services.scheduler.db.engine import Database
from services.scheduler.db.identity_store import API, POOL, RUNNER, IdentityStore
from services.scheduler.db.models import UserRow


class AdminError(Exception):
    """A command that cannot be done (unknown user or token); exit status 1."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m services.scheduler admin", description=__doc__.split("\n")[0])
    commands = p.add_subparsers(dest="command", required=True)
    user = commands.add_parser("create-user", help="create a user")
    user.add_argument("name")
    user.add_argument("--email", default="")
    user.add_argument("--tier", choices=TIERS, default="free")
    user.add_argument("--admin", action="store_true")
    token = commands.add_parser("create-token", help="create a token for a user (printed once)")
    token.add_argument("user", help="user id or name")
    token.add_argument("--name", default="", help="what the token is for")
    token.add_argument("--expires-in-days", type=float, default=None)
    token.add_argument("--kind", choices=(API, RUNNER, POOL), default=API)
    revoke = commands.add_parser("revoke-token", help="revoke a token, by its id or the token itself")
    revoke.add_argument("token")
    listing = commands.add_parser("list-tokens", help="a user's tokens (never the tokens themselves)")
    listing.add_argument("user", help="user id or name")
    return p


async def _user(identity: IdentityStore, key: str) -> UserRow:
    user = await identity.user_by_id_or_name(key)
    if user is None:
        raise AdminError(f"no user {key!r}")
    return user


async def run(args: argparse.Namespace, settings: Settings) -> None:
    db = Database(settings.database_url)
    try:
        await db.migrate()
        identity = IdentityStore(db)
        if args.command == "create-user":
            created = await identity.create_user(args.name, tier=args.tier, email=args.email, is_admin=args.admin)
            print(f"user {created.id} {created.name} tier={created.tier}")
        elif args.command == "create-token":
            user = await _user(identity, args.user)
            if args.kind == POOL and not user.is_admin:
                raise AdminError("a pool token is only for an administrator (create-user --admin)")
            if args.expires_in_days is not None and args.expires_in_days <= 0:
                raise AdminError("--expires-in-days must be above 0")
            ttl = timedelta(days=args.expires_in_days) if args.expires_in_days else None
            token, row = await identity.issue_token_row(user.id, args.kind, ttl, name=args.name)
            expires = row.expires_at.isoformat() if row.expires_at else "never"
            print(f"token id {row.id} for {user.name} ({args.kind}), expires {expires}")
            print(token)
        elif args.command == "revoke-token":
            revoked = await identity.revoke_token(args.token)
            if revoked is None:
                raise AdminError("no such token")
            print(f"revoked token {revoked.id}")
        elif args.command == "list-tokens":
            user = await _user(identity, args.user)
            for t in await identity.tokens_of(user.id):
                state = "revoked" if t.revoked_at else "active"
                print(f"{t.id} {t.kind} {state} name={t.name!r} created={t.created_at.isoformat()} "
                      f"expires={t.expires_at.isoformat() if t.expires_at else 'never'} "
                      f"last_used={t.last_used_at.isoformat() if t.last_used_at else 'never'}")
    finally:
        await db.close()


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    try:
        asyncio.run(run(args, Settings.from_env()))
    except AdminError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
