"""Rosters through ejabberd's admin API (mod_http_api with mod_admin_extra).

ejabberd's XEP-0356 roster writes cannot do this job (23.01 fails them, 24.12 ignores the
subscription), but its own commands can: ``add_rosteritem`` with ``subs: both`` stores the
item, pushes it to the user's online clients and routes presence at once, and
``delete_rosteritem`` removes it with the presence that goes with it. So presence needs no
announcement here.

23.01 and 24.12 differ in arguments and answers (groups as one ";"-joined string and an
``ask`` field, or a list and a ``pending`` field). Answers are read by their keys; writes use
the newer form until the server asks for the older one, then keep to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from component import metrics
from component.errors import (
    ApiFailedError,
    ItemRefusedError,
    StoreError,
    StoreUnavailableError,
    UnknownUserError,
)
from component.roster import Contact, StoredRoster

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

log = structlog.get_logger(__name__)

# While the API fails, how often to ask again whether it is back (readiness).
_PROBE_INTERVAL = 5.0
# A username only ever asked about, to see that the API answers for us.
_PROBE_USER = "http-roster-admin-probe"
# The scan of every roster item for pending requests: how much longer than one call it may
# take, and for how many times its duration its result serves later reads.
_SCAN_TIMEOUT_FACTOR = 6
_SCAN_REUSE_FACTOR = 10
# check_account answers like ejabberdctl's exit status: 0 is "exists".
_ACCOUNT_EXISTS = 0
_PENDING_OUT = frozenset({"out", "both"})
_PENDING_IN = frozenset({"in", "both"})


class AdminApiRosterStore:
    """Each call is one POST {api_url}/{command} with JSON arguments, on kept-alive
    connections, at most ``concurrency`` in flight."""

    def __init__(  # noqa: PLR0913 -- where the API is and how to call it
        self,
        api_url: str,
        domain: str,
        *,
        user: str = "",
        password: str = "",
        concurrency: int,
        timeout: float,
        on_change: Callable[[], None],
    ) -> None:
        self._url = api_url
        self._domain = domain
        self._headers = {
            # ejabberd (24.12) looks up its API options for the host a request names, and
            # warns about every request naming another.
            "Host": domain,
            **({"Authorization": aiohttp.encode_basic_auth(user, password)} if user else {}),
        }
        self._concurrency = concurrency
        self._timeout = timeout
        self._on_change = on_change
        self._session: aiohttp.ClientSession | None = None
        self._problem: str | None = "the ejabberd API has not answered yet"
        self._probe: asyncio.Task[None] | None = None
        # ejabberd 23.01 takes groups as one string and cannot name a group with ";".
        self._joined_groups = False
        # process_rosteritems not allowed (or not available): said once, then not asked again.
        self._no_rosteritems = False
        # It scans every roster item of the server, whoever it is asked about: one scan for
        # the whole host serves every read that starts while it runs or shortly after.
        self._scan: asyncio.Future[dict[str, list[str]]] | None = None
        self._scan_reusable_until = 0.0
        self._turns: dict[str, _Turn] = {}

    # --- lifecycle and readiness -------------------------------------------------------------

    def problem(self) -> str | None:
        return self._problem

    async def open(self) -> None:
        """Start asking the API whether it answers; readiness follows what it says."""
        self._probe = asyncio.ensure_future(self._keep_probing())

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _keep_probing(self) -> None:
        while True:
            # An account that cannot exist: the answer only shows the API works for us. A
            # failure has set the problem already.
            with contextlib.suppress(StoreError):
                await self._call("check_account", {"user": _PROBE_USER, "host": self._domain})
            if self._problem is None:
                return
            await asyncio.sleep(_PROBE_INTERVAL)

    def _set_problem(self, problem: str | None) -> None:
        if problem == self._problem:
            return
        self._problem = problem
        if problem is not None:
            log.warning("store.api_unavailable", url=self._url, problem=problem)
            if self._probe is None or self._probe.done():
                self._probe = asyncio.ensure_future(self._keep_probing())
        self._on_change()

    # --- the store ---------------------------------------------------------------------------

    async def read(self, user: str) -> StoredRoster:
        username, _, host = user.partition("@")
        rows, strangers = await asyncio.gather(
            self._call("get_roster", {"user": username, "server": host}),
            self._pending_strangers(user),
        )
        if not isinstance(rows, list):
            raise StoreError(f"ejabberd API get_roster: unexpected answer {rows!r:.200}")
        if not rows:
            # ejabberd answers [] for accounts that do not exist, and add_rosteritem would
            # create a roster for them: tell the two apart before anything is written.
            await self._check_account(username, host)
        contacts: dict[str, Contact] = {}
        pending_in = set(strangers)
        for row in rows:
            contact, pending = _contact(row, contacts)
            contacts[contact.jid] = contact
            if pending in _PENDING_IN:
                pending_in.add(contact.jid)
        return StoredRoster(contacts, frozenset(pending_in))

    async def _pending_strangers(self, user: str) -> list[str]:
        """Requests from people not in the roster: ejabberd keeps them as items that
        get_roster leaves out (subscription none, pending in), and offers them to the user at
        every login. process_rosteritems sees them (Mnesia roster storage only)."""
        if self._no_rosteritems:
            return []
        loop = asyncio.get_running_loop()
        scan = self._scan
        if scan is None or (scan.done() and loop.time() >= self._scan_reusable_until):
            scan = self._scan = asyncio.ensure_future(self._scan_strangers())
        # Shielded: one reader cancelled must not cancel the scan the others wait for.
        return (await asyncio.shield(scan)).get(user, [])

    async def _scan_strangers(self) -> dict[str, list[str]]:
        """Every pending request from a stranger on this host, by user (one scan).

        The scan visits every roster item of the server; its result is reused for ten times
        as long as it took, so scans take a tenth of ejabberd's time at most however many
        users sync (a request arriving meanwhile is found by the next scan: drift is repaired
        at the next sync that reads, the reconciliation's at the latest).
        """
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            found = await self._call(
                "process_rosteritems",
                _pending_query(f"*@{self._domain}"),
                optional=True,
                answer_within=_SCAN_TIMEOUT_FACTOR * self._timeout,
            )
        except ApiFailedError as exc:
            self._no_rosteritems = True
            log.error(  # noqa: TRY400 -- an expected answer, its traceback says nothing
                "store.pending_requests_unseen",
                error=str(exc),
                hint="allow process_rosteritems in api_permissions (deploy/ejabberd/); without "
                "it, pending requests from strangers are not repaired",
            )
            return {}
        except StoreError:
            self._scan = None  # not reused: the next read asks again
            raise
        self._scan_reusable_until = loop.time() + _SCAN_REUSE_FACTOR * (loop.time() - began)
        by_user: dict[str, list[str]] = {}
        for entry in found if isinstance(found, list) else []:
            if isinstance(entry, dict):
                by_user.setdefault(str(entry["user"]), []).append(str(entry["contact"]))
        return by_user

    async def write(self, user: str, contact: Contact) -> None:
        async with self._turn(user):
            await self._write(user, contact)

    async def _write(self, user: str, contact: Contact) -> None:
        username, _, host = user.partition("@")
        contact_user, _, contact_host = contact.jid.rpartition("@")
        args: dict[str, Any] = {
            "localuser": username,
            "localhost": host,
            "user": contact_user,
            "host": contact_host,
            "nick": contact.name or "",
            "subs": contact.subscription,
        }
        groups = sorted(contact.groups)
        try:
            if not self._joined_groups:
                await self._command("add_rosteritem", {**args, "groups": groups})
                return
        except ApiFailedError as exc:
            if "missing argument: group" not in exc.text:
                raise _write_error(exc) from None
            log.info("store.api_shape", groups="one string", why="ejabberd before 24")
            self._joined_groups = True
        if any(";" in group for group in groups):
            raise ItemRefusedError(
                f"{contact.jid}: this ejabberd cannot store a group name containing ';' ({groups})"
            )
        try:
            await self._command("add_rosteritem", {**args, "group": ";".join(groups)})
        except ApiFailedError as exc:
            raise _write_error(exc) from None

    async def remove(self, user: str, jid: str) -> None:
        username, _, host = user.partition("@")
        contact_user, _, contact_host = jid.rpartition("@")
        # Answers 0 whether or not the item was there: removing is idempotent.
        async with self._turn(user):
            await self._call(
                "delete_rosteritem",
                {
                    "localuser": username,
                    "localhost": host,
                    "user": contact_user,
                    "host": contact_host,
                },
            )

    @contextlib.asynccontextmanager
    async def _turn(self, user: str) -> AsyncIterator[None]:
        """One change at a time per user: ejabberd's roster cache can lose one of two
        concurrent changes to the same roster (seen on 23.01 under load: an item written,
        answered 0, and missing from the user's next roster query). Users still go in
        parallel."""
        turn = self._turns.setdefault(user, _Turn())
        turn.waiting += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.waiting -= 1
            if not turn.waiting:
                del self._turns[user]

    async def clear_pending(self, user: str, jids: Sequence[str]) -> None:
        # A request on a contact's item is reset by writing the item again as it is stored; a
        # stranger's request is an item of its own, removed like any item. (Not with
        # process_rosteritems: it bypasses ejabberd's roster cache, which would still offer
        # the request at the next login.)
        stored = await self.read(user)
        for jid in jids:
            if (contact := stored.contacts.get(jid)) is not None:
                await self.write(user, contact)
            else:
                await self.remove(user, jid)
            self._forget_stranger(user, jid)

    def _forget_stranger(self, user: str, jid: str) -> None:
        """A cleared request leaves the scan's result too: reads reusing it must not find it."""
        if self._scan is not None and self._scan.done() and not self._scan.exception():
            with contextlib.suppress(ValueError):
                self._scan.result().get(user, []).remove(jid)

    async def announce(self, user: str, added: Sequence[str], removed: Sequence[str]) -> None:
        # add_rosteritem and delete_rosteritem route presence themselves.
        del user, added, removed

    # --- calls -------------------------------------------------------------------------------

    async def _check_account(self, username: str, host: str) -> None:
        if await self._call("check_account", {"user": username, "host": host}) != _ACCOUNT_EXISTS:
            raise UnknownUserError(f"ejabberd has no account {username}@{host}")

    async def _command(self, command: str, args: dict[str, Any]) -> Any:
        """A write: any answer but 0 is a refusal (raised as ApiFailedError)."""
        result = await self._call(command, args, failures=True)
        if result != 0:
            raise ApiFailedError(command, 200, f"answered {result!r}")
        return result

    async def _call(
        self,
        command: str,
        args: dict[str, Any],
        *,
        failures: bool = False,
        optional: bool = False,
        answer_within: float | None = None,
    ) -> Any:
        """POST one command; its decoded answer.

        Network trouble and authorization problems make the store unavailable (readiness),
        except for an ``optional`` command, whose refusal is only ApiFailedError. Other error
        answers are StoreError, or ApiFailedError when ``failures`` is set.
        """
        status, text = await self._post(command, args, answer_within or self._timeout)
        if optional and status in {401, 403, 404}:
            raise ApiFailedError(command, status, text)
        problem: str | None = None
        if status in {401, 403}:
            problem = (
                f"ejabberd API refuses {command} (HTTP {status}): check api_permissions "
                "and server.api_user / api_password"
            )
        elif status == 404:
            problem = (
                f"ejabberd API has no {command} at {self._url}: check server.api_url and "
                "that mod_admin_extra is loaded"
            )
        if problem is not None:
            self._set_problem(problem)
            raise StoreUnavailableError(problem)
        self._set_problem(None)
        if status != 200:
            error = ApiFailedError(command, status, text)
            if failures:
                raise error
            raise StoreError(str(error))
        try:
            return json.loads(text)
        except ValueError:
            raise StoreError(f"ejabberd API {command}: not JSON: {text[:200]!r}") from None

    async def _post(self, command: str, args: dict[str, Any], within: float) -> tuple[int, str]:
        """The HTTP status and body of one command; StoreUnavailableError without an answer."""
        metrics.SERVER_REQUESTS.labels(kind="api").inc()
        try:
            async with self._get_session().post(
                f"{self._url}/{command}", json=args, timeout=aiohttp.ClientTimeout(total=within)
            ) as response:
                return response.status, await response.text()
        except TimeoutError:
            unreachable = f"ejabberd API at {self._url}: no answer in {within}s"
            if asyncio.current_task() is self._probe:
                self._set_problem(unreachable)
            elif self._probe is None or self._probe.done():
                # One slow answer (a loaded server) is not an API gone: the probe decides, so
                # that refreshes are not refused for a probe interval over one late call.
                self._probe = asyncio.ensure_future(self._keep_probing())
            raise StoreUnavailableError(unreachable) from None
        except aiohttp.ClientError as exc:
            unreachable = f"ejabberd API at {self._url} unreachable: {exc}"
            self._set_problem(unreachable)
            raise StoreUnavailableError(unreachable) from None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created on first use: a ClientSession belongs to the loop running when it is made.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                connector=aiohttp.TCPConnector(limit=self._concurrency),
            )
        return self._session


@dataclass(slots=True)
class _Turn:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0


def _pending_query(users: str) -> dict[str, str]:
    """process_rosteritems arguments listing pending requests from strangers to ``users`` (a
    pattern)."""
    return {"action": "list", "subs": "none", "asks": "in", "users": users, "contacts": "any"}


def _write_error(exc: ApiFailedError) -> StoreError:
    """A refused item (the others may still go in), unless the server itself failed."""
    return StoreError(str(exc)) if exc.status >= 500 else ItemRefusedError(str(exc))


def _contact(row: dict[str, Any], seen: dict[str, Contact]) -> tuple[Contact, str]:
    """One get_roster row as a contact, and its pending state ("none", "in", "out", "both").

    24.12 lists each contact once with ``groups``; 23.01 once per group with ``group``.
    """
    jid = str(row["jid"])
    pending = str(row.get("pending", row.get("ask", "none")))
    groups = row["groups"] if "groups" in row else [row.get("group", "")]
    before = seen.get(jid)
    contact = Contact(
        jid=jid,
        name=row.get("nick") or None,
        groups=frozenset(g for g in groups if g) | (before.groups if before else frozenset()),
        subscription=str(row.get("subscription", "none")),
        ask=pending in _PENDING_OUT,
    )
    return contact, pending
