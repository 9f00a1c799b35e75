"""Users, their tokens and their runners.

Tokens are random (`cf_` + 32 url-safe bytes), shown once, stored as sha256, may expire, and
record their last use (at most once a minute, to keep reads cheap).

`authenticate` keeps what it found in a small in-process cache (token sha256 -> token and
user; LRU, `TOKEN_CACHE_SIZE` entries, `token_cache_seconds`), so the gateway's pre-check and
the call behind it read the database once. Expiry is checked on every call; a revocation
through this store takes effect at once; a revocation by another process (the admin command,
another scheduler) takes up to `token_cache_seconds`, and so does a change of the user's tier.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlmodel import col, select

from services.scheduler.db.engine import Database, runs_to_completion
from services.scheduler.db.models import RunnerRow, TokenRow, UserRow
from services.scheduler.errors import RunnerNotFound, Unauthenticated
from services.scheduler.records import utcnow

API = "api"
RUNNER = "runner"
# Drives every runner registered through the API (a runner pool); issued only to an
# administrator, since it reads their ComfyUI headers in clear.
POOL = "pool"


def new_token() -> str:
    return "cf_" + secrets.token_urlsafe(32)


def _aware(value: datetime) -> datetime:
    """SQLite gives back naive datetimes; they were stored in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


TOKEN_CACHE_SIZE = 4096


@dataclass
class _KnownToken:
    """A token `authenticate` accepted, as the database had it `at` (time.monotonic)."""

    token_id: str
    kind: str
    expires_at: datetime | None
    last_used_at: datetime | None
    user: UserRow
    at: float


class IdentityStore:
    def __init__(self, db: Database, *, token_cache_seconds: float = 10.0) -> None:
        self.db = db
        self.token_cache_seconds = token_cache_seconds
        self._known: OrderedDict[str, _KnownToken] = OrderedDict()
        self._revocations = 0

    @runs_to_completion
    async def create_user(self, name: str, *, tier: str = "free", email: str = "", is_admin: bool = False) -> UserRow:
        now = utcnow()
        row = UserRow(id=str(uuid.uuid4()), name=name, email=email, tier=tier, is_admin=is_admin,
                      created_at=now, updated_at=now)
        async with self.db.write_lock, self.db.sessions() as s, s.begin():
            s.add(row)
        return row

    @runs_to_completion
    async def user_by_name(self, name: str) -> UserRow | None:
        async with self.db.sessions() as s:
            return (await s.exec(select(UserRow).where(UserRow.name == name))).first()

    @runs_to_completion
    async def issue_token(self, user_id: str, kind: str, ttl: timedelta | None = None, *, name: str = "") -> str:
        return (await self.issue_token_row(user_id, kind, ttl, name=name))[0]

    @runs_to_completion
    async def issue_token_row(
        self, user_id: str, kind: str, ttl: timedelta | None = None, *, name: str = ""
    ) -> tuple[str, TokenRow]:
        """A new token (returned once, never stored) and its row (which holds only its sha256)."""
        token = new_token()
        now = utcnow()
        row = TokenRow(id=str(uuid.uuid4()), user_id=user_id, token_sha256=token_digest(token), kind=kind,
                       name=name, created_at=now, expires_at=now + ttl if ttl else None)
        async with self.db.write_lock, self.db.sessions() as s, s.begin():
            s.add(row)
        return token, row

    @runs_to_completion
    async def revoke_token(self, token_id_or_token: str) -> TokenRow | None:
        """Revokes a token given by its id or by the token itself; None if there is no such token."""
        async with self.db.write_lock, self.db.sessions() as s, s.begin():
            row = await s.get(TokenRow, token_id_or_token)
            if row is None:
                digest = token_digest(token_id_or_token)
                row = (await s.exec(select(TokenRow).where(TokenRow.token_sha256 == digest))).first()
            if row is not None and row.revoked_at is None:
                row.revoked_at = utcnow()
                s.add(row)
        if row is not None:
            self._revocations += 1
            self._known.pop(row.token_sha256, None)
        return row

    @runs_to_completion
    async def tokens_of(self, user_id: str) -> list[TokenRow]:
        async with self.db.sessions() as s:
            query = select(TokenRow).where(TokenRow.user_id == user_id).order_by(col(TokenRow.created_at))
            return list((await s.exec(query)).all())

    @runs_to_completion
    async def user_by_id_or_name(self, key: str) -> UserRow | None:
        async with self.db.sessions() as s:
            return await s.get(UserRow, key) or (await s.exec(select(UserRow).where(UserRow.name == key))).first()

    async def authenticate(self, token: str, kind: str) -> UserRow:
        """The user owning `token` of `kind`; Unauthenticated if unknown, revoked, expired or the
        wrong kind. From the cache when this process accepted the token in the last
        `token_cache_seconds` (see the module's docstring)."""
        if not token:
            raise Unauthenticated("missing bearer token", reason="TOKEN_MISSING")
        digest = token_digest(token)
        known = self._known.get(digest)
        if known is None or time.monotonic() - known.at >= self.token_cache_seconds:
            revocations = self._revocations
            known = await self._look_up(digest, kind)
            # Not kept if this process revoked a token meanwhile (it may have been this one).
            if self.token_cache_seconds > 0 and revocations == self._revocations:
                self._known[digest] = known
                while len(self._known) > TOKEN_CACHE_SIZE:
                    self._known.popitem(last=False)
        else:
            self._known.move_to_end(digest)
        if known.kind != kind:
            raise Unauthenticated("invalid token", reason="TOKEN_INVALID")
        now = utcnow()
        if known.expires_at is not None and _aware(known.expires_at) <= now:
            raise Unauthenticated("token expired", reason="TOKEN_EXPIRED")
        if known.last_used_at is None or now - _aware(known.last_used_at) > timedelta(minutes=1):
            known.last_used_at = now
            await self._record_use(known.token_id, now)
        return known.user

    @runs_to_completion
    async def _look_up(self, digest: str, kind: str) -> _KnownToken:
        """The token with this sha256 and its user, unless unknown, of another kind or revoked."""
        async with self.db.sessions() as s:
            tok = (await s.exec(select(TokenRow).where(TokenRow.token_sha256 == digest))).first()
            if tok is None or tok.kind != kind:
                raise Unauthenticated("invalid token", reason="TOKEN_INVALID")
            if tok.revoked_at is not None:
                raise Unauthenticated("token revoked", reason="TOKEN_REVOKED")
            user = await s.get(UserRow, tok.user_id)
            if user is None:
                raise Unauthenticated("invalid token", reason="TOKEN_INVALID")
            return _KnownToken(tok.id, tok.kind, tok.expires_at, tok.last_used_at, user, time.monotonic())

    @runs_to_completion
    async def _record_use(self, token_id: str, now: datetime) -> None:
        async with self.db.write_lock, self.db.sessions() as s, s.begin():
            fresh = await s.get(TokenRow, token_id)
            if fresh is not None:
                fresh.last_used_at = now
                s.add(fresh)

    @runs_to_completion
    async def upsert_runner(
        self, user_id: str, name: str, *, tags: list[str], slots: int, comfyui_version: str, digest: str
    ) -> RunnerRow:
        """The runner a self-registering agent is, by (owner, name); created on first hello.
        A runner registered through the API is never matched: only its pool session binds it."""
        now = utcnow()
        async with self.db.write_lock, self.db.sessions() as s, s.begin():
            row = (await s.exec(select(RunnerRow).where(RunnerRow.user_id == user_id, RunnerRow.name == name,
                                                        RunnerRow.endpoint == ""))).first()
            if row is None:
                row = RunnerRow(id=str(uuid.uuid4()), user_id=user_id, name=name, created_at=now, updated_at=now)
            row.tags_json = json.dumps(tags)
            row.slots = slots
            row.comfyui_version = comfyui_version
            row.object_info_digest = digest
            row.last_seen_at = now
            row.updated_at = now
            s.add(row)
        return row

    @runs_to_completion
    async def hello_registered_runner(
        self, runner_id: str, *, slots: int, comfyui_version: str, digest: str
    ) -> RunnerRow:
        """A pool session's hello: the runner registered through the API as `runner_id`
        (RunnerNotFound if there is none, or it is a self-registered agent)."""
        async with self.db.write_lock, self.db.sessions() as s, s.begin():
            row = await s.get(RunnerRow, runner_id)
            if row is None or not row.endpoint:
                raise RunnerNotFound(runner_id)
            row.slots = slots
            row.comfyui_version = comfyui_version
            row.object_info_digest = digest
            row.last_seen_at = utcnow()
            s.add(row)
        return row

    @runs_to_completion
    async def runners_of(self, user_id: str) -> list[RunnerRow]:
        async with self.db.sessions() as s:
            return list((await s.exec(select(RunnerRow).where(RunnerRow.user_id == user_id))).all())

    @runs_to_completion
    async def touch_runner(self, runner_id: str) -> None:
        async with self.db.write_lock, self.db.sessions() as s, s.begin():
            row = await s.get(RunnerRow, runner_id)
            if row is not None:
                row.last_seen_at = utcnow()
                s.add(row)
