"""Signing (``COORD_SIGNING_KEY``): HMAC-SHA256 over an event's or an instance record's
canonical JSON, bound to the namespace."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_SIG = re.compile(r"[0-9a-f]{64}")


UNSIGNED = ("running unsigned (COORD_SIGNING_KEY is not set): anyone who can write to "
            "namespace %r can release held connections and forge the fleet view "
            "(docs/security.md)")


def canonical(body: Mapping[str, Any]) -> bytes:
    """JSON without ``sig``, keys sorted, compact: what a signature covers, after the
    kind of data and the namespace (see :class:`Keyring`)."""
    unsigned = {k: v for k, v in body.items() if k != "sig"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Keyring:
    """The keys of ``COORD_SIGNING_KEY`` and the namespace every signature is bound to.

    Several comma-separated keys rotate without downtime: the first signs, every one
    verifies (roll out ``old,new``, then ``new,old``, then ``new``). A signature is HMAC-SHA256,
    hex, over ``<kind>\n<namespace>\n<canonical JSON>`` with kind ``event`` or
    ``record``: a message signed for one namespace (or an instance hash) is never valid as
    another's, although the namespace is not transmitted.
    """

    keys: tuple[bytes, ...] = field(repr=False)
    namespace: str

    @classmethod
    def of(cls, raw: str | None, namespace: str) -> Keyring | None:
        """The keyring of a ``COORD_SIGNING_KEY`` value; None when it is unset or empty."""
        keys = tuple(k.strip().encode() for k in (raw or "").split(",") if k.strip())
        return cls(keys, namespace) if keys else None

    def sign(self, kind: str, body: Mapping[str, Any]) -> str:
        return self._mac(self.keys[0], kind, body)

    def verify(self, kind: str, body: Mapping[str, Any]) -> bool:
        """Whether ``body["sig"]`` is the signature of ``body`` by any of the keys."""
        sig = body.get("sig")
        if not isinstance(sig, str) or not _SIG.fullmatch(sig):  # compare_digest would
            return False  # raise on a non-ASCII str
        # Every key is tried (a list, not a generator that stops at the first match), so
        # the time taken does not say which key signed.
        return any([hmac.compare_digest(sig, self._mac(k, kind, body)) for k in self.keys])  # noqa: C419

    def _mac(self, key: bytes, kind: str, body: Mapping[str, Any]) -> str:
        signed = f"{kind}\n{self.namespace}\n".encode() + canonical(body)
        return hmac.new(key, signed, hashlib.sha256).hexdigest()


def sign_record(record: Mapping[str, str], keyring: Keyring) -> str:
    """Signature of an instance hash: every field as stored but ``sig`` itself (the
    record is rewritten whole at every write), bound to the namespace."""
    return keyring.sign("record", record)


def record_signature_ok(record: Mapping[str, str], keyring: Keyring | None) -> bool:
    """True without a keyring; else whether ``record["sig"]`` covers every other field."""
    return keyring is None or keyring.verify("record", record)
