"""A meter's keys renewed: the `rekey` command, run by the worker holding the meter.

1. An association under the meter's keys (HLS-GMAC, ciphered).
2. New keys (EK, AK) drawn in Rust (``Directory.new_keys``: they never exist in
   Python), stored as the meter's *pending* keys (wrapped under the master key)
   before the meter hears of them, so no crash leaves a meter with keys nobody has.
3. The Security Setup object's ``key_transfer`` (class 64, 0.0.43.0.0.255, method 2)
   with both keys wrapped under the meter's master key (RFC 3394); release.
4. A fresh association under the new keys. Only when it succeeds do they become
   current in the store; the old ones stay *previous* for ``grace`` seconds, so the
   frames a meter buffered under them are still accepted.

A meter that refuses the transfer keeps its keys (the pending ones are dropped). A
meter that took it but does not associate under the new keys is tried under its old
ones: if they work it kept them; if neither works, the new keys stay pending and the
next attempt starts by trying them (the rotation resumes instead of starting over).
Counters are not reset: both sides keep counting up across the change.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from headend import codec
from headend.codec import Directory, MasterKey
from headend.errors import HeadendError
from headend.server.client import ClientError, MeterClient, Refused

SECURITY_SETUP = "0.0.43.0.0.255"
KEY_TRANSFER = 2

# Tells the store a change of the meter's stored keys ("pending" with the wrapped keys,
# "current", "drop"); raises ClientError when the store could not record it.
StoreKeys = Callable[[dict[str, Any]], Awaitable[None]]


async def _associates(c: MeterClient) -> str:
    """'' when an association under the directory's current keys succeeds (and is
    released), else why not."""
    try:
        async with c.associated():
            pass
    except ClientError as e:
        return str(e)
    return ""


async def rekey(
    c: MeterClient, directory: Directory, master: MasterKey, store: StoreKeys, grace: float
) -> dict[str, Any]:
    """Renews meter `c`'s global keys; returns the outcome or raises ClientError."""
    meter = c.meter
    if not c.keyed or c.title is None:
        raise ClientError(
            f"meter {c.serial} has no keys to renew (it is not ciphered)", retry=False
        )
    if not directory.has_kek(meter):
        raise ClientError(
            f"meter {c.serial} has no master key (kek) in the store: import it in the "
            "meters file's kek column",
            retry=False,
        )
    _, pending = directory.rotation_state(meter)
    if pending:
        # An earlier attempt got as far as telling the meter: does it use them now?
        directory.promote_keys(meter)
        if not await _associates(c):
            await store({"op": "current", "grace": grace})
            return {"verified": True, "resumed": True, "grace_s": grace}
        directory.revert_keys(meter)
    async with c.associated():
        try:
            ek, ak = directory.new_keys(meter, master, os.urandom(24))
        except HeadendError as e:
            raise ClientError(f"new keys for meter {c.serial}: {e}") from None
        await store({"op": "pending", "ek": ek.hex(), "ak": ak.hex()})
        parameter = codec.decode_data(directory.key_transfer(meter))
        try:
            await c.action(64, SECURITY_SETUP, KEY_TRANSFER, parameter)
        except Refused as e:
            directory.drop_keys(meter, pending=True)
            await store({"op": "drop"})
            raise ClientError(
                f"meter {c.serial} refused the new keys ({e}); it keeps its keys", retry=False
            ) from None
        except ClientError as e:
            # No answer: the meter may or may not have them. They stay pending.
            raise ClientError(
                f"key transfer to meter {c.serial} unanswered ({e}); the new keys "
                "stay pending and are tried first next time"
            ) from None
    directory.promote_keys(meter)
    why = await _associates(c)
    if why:
        directory.revert_keys(meter)
        if not await _associates(c):
            directory.drop_keys(meter, pending=True)
            await store({"op": "drop"})
            raise ClientError(
                f"meter {c.serial} took the key transfer but does not associate under the "
                f"new keys ({why}); it still works with its old keys, which it keeps",
                retry=False,
            )
        raise ClientError(
            f"meter {c.serial} associates under neither its new keys ({why}) nor its old "
            "ones; the new keys stay pending and are tried first next time"
        )
    await store({"op": "current", "grace": grace})
    return {"verified": True, "resumed": False, "grace_s": grace}
