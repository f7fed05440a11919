"""What the operator commands print. Pure: text in, text out."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import tomli_w

from component.cli.service import Counts
from component.config import SECRETS

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from component.check import CheckResult, ItemChange
    from component.config import Config
    from component.roster import Contact

MASK = "********"


def effective_config(cfg: Config, environ: Mapping[str, str]) -> str:
    """The configuration as the service uses it, as TOML: defaults filled in, secrets masked
    (those that came from the environment say which variable)."""
    data = cfg.model_dump()
    data["server"]["delegate_roster"] = cfg.server.delegates
    for section, key, var in SECRETS:
        if data[section][key]:
            data[section][key] = MASK + (f" (from {var})" if environ.get(var) else "")
    return tomli_w.dumps(data)


def check_report(results: Sequence[CheckResult]) -> list[str]:
    """One block per user: in sync, each difference, or why it could not be checked; a
    summary line when there are several users."""
    lines: list[str] = []
    for result in results:
        if result.error is not None:
            lines.append(f"{result.username}: error: {result.error}")
            continue
        if result.in_sync:
            lines.append(f"{result.username}: in sync ({_count(result.contacts, 'contact')})")
        else:
            lines.append(f"{result.username}: {_count(len(result.changes), 'difference')}")
            lines += [f"  {line}" for change in result.changes for line in _change(change)]
        lines += [f"  warning: {warning}" for warning in result.warnings]
    if len(results) > 1:
        failed = sum(r.error is not None for r in results)
        in_sync = sum(r.in_sync for r in results)
        lines.append(
            f"{_count(len(results), 'user')}: {in_sync} in sync, "
            f"{len(results) - in_sync - failed} differ, {failed} failed"
        )
    return lines


def _change(change: ItemChange) -> list[str]:
    """What a sync would do to one item, one line per field it would change."""
    match change.kind:
        case "add":
            return [f"+ {change.jid}  {_describe(change.now)}"]
        case "remove":
            return [f"- {change.jid}  {_describe(change.was)}"]
        case "pending_request":
            return [f"! {change.jid}  pending inbound subscription request"]
        case "update":
            return [
                f"~ {change.jid}  {field}: {_field(change.was, field)} -> "
                f"{_field(change.now, field)}"
                for field in change.fields
            ]


def _describe(contact: Contact | None) -> str:
    """An added or removed item; subscription and ask only when not what a sync writes."""
    parts = [f"name {_field(contact, 'name')}", f"groups {_field(contact, 'groups')}"]
    if contact is not None and contact.subscription != "both":
        parts.append(f"subscription {contact.subscription}")
    if contact is not None and contact.ask:
        parts.append("ask subscribe")
    return ", ".join(parts)


def _field(contact: Contact | None, field: str) -> str:
    if contact is None:
        return "-"
    match field:
        case "name":
            return json.dumps(contact.name, ensure_ascii=False) if contact.name else "(none)"
        case "groups":
            return json.dumps(sorted(contact.groups), ensure_ascii=False)
        case "ask":
            return "subscribe" if contact.ask else "(none)"
        case _:
            return contact.subscription


def total(parts: Sequence[Counts]) -> Counts:
    """The answers to the chunks of one refresh, summed as one answer for all of it would be:
    "error" only when no user at all was updated."""
    updated = sum(part.updated for part in parts)
    errors = sum(part.errors for part in parts)
    failure = errors > 0 and updated == 0
    return Counts(
        status="error" if failure else "ok",
        message="roster update failed" if failure else "roster update complete",
        updated=updated,
        errors=errors,
        failed=tuple(sorted(name for part in parts for name in part.failed)),
    )


def counts_json(counts: Counts) -> str:
    """A refresh's counts as the refresh endpoint answers them."""
    return json.dumps(
        {
            "status": counts.status,
            "message": counts.message,
            "updated": counts.updated,
            "errors": counts.errors,
            "failed": list(counts.failed),
        },
        ensure_ascii=False,
    )


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")
