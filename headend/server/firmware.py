"""A meter's firmware upgraded: the `firmware` command, run by the worker holding the
meter, over the Image Transfer object (class 18, 0.0.44.0.0.255, Green Book 4.4.6).

Phase ``transfer`` (one association):
1. The active firmware (1.0.0.2.0.255): a meter already on the image's identifier is
   done.
2. ``image_transfer_enabled``, the meter's ``image_block_size``; then
   ``image_transfer_initiate`` (identifier, size). A meter that had part of the same
   image keeps it: ``image_transferred_blocks_status`` says which blocks it has, and
   only the missing ones are sent (the transfer resumes, it does not start over).
3. ``image_block_transfer`` for each missing block; the status read again, and the
   blocks still missing sent again (a few rounds at most).
4. ``image_verify``; the status polled while the meter verifies; then
   ``image_to_activate_info`` must name the image's identifier and size.
5. With ``activate_at`` in the future the command ends here, verified, and asks for
   its phase ``activate`` at that time (`then`: the queue submits it, not before it).

Phase ``activate`` (or straight on when no time was set): ``image_activate``, then the
active firmware read back: the upgrade is confirmed only when the meter reports the new
identifier. A meter already on it (a retry after its reboot) is confirmed as it is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from headend import codec
from headend.firmware import FirmwareError, Image
from headend.server.client import ClientError, MeterClient, Refused

IMAGE_TRANSFER = "0.0.44.0.0.255"
ACTIVE_FIRMWARE = "1.0.0.2.0.255"
STATUS = {
    0: "not initiated",
    1: "initiated",
    2: "verification initiated",
    3: "verification successful",
    4: "verification failed",
    5: "activation initiated",
    6: "activation successful",
    7: "activation failed",
}
# Rounds of re-sending blocks a meter says it lacks, and polls of a verification.
ROUNDS = 3
POLLS = 30


async def _active(c: MeterClient) -> str:
    v = await c.get(1, ACTIVE_FIRMWARE, 2)
    raw = bytes.fromhex(v["value"]) if v.get("type") == "octet-string" else str(v["value"]).encode()
    return raw.decode("ascii", "replace")


async def _missing(c: MeterClient, blocks: int) -> list[int]:
    bits = str((await c.get(18, IMAGE_TRANSFER, 3))["value"])
    have = bits.ljust(blocks, "0")[:blocks]
    return [i for i, b in enumerate(have) if b != "1"]


async def _status(c: MeterClient) -> int:
    return int((await c.get(18, IMAGE_TRANSFER, 6))["value"])


async def _verify(c: MeterClient, image: Image, poll: float) -> None:
    try:
        await c.action(18, IMAGE_TRANSFER, 3, codec.data("integer", 0))
    except Refused as e:
        if e.result != "temporary-failure":
            status = await _status(c)
            raise ClientError(
                f"meter {c.serial} did not verify image {image.identifier} "
                f"({STATUS.get(status, status)}: {e})",
                retry=status != 4,
            ) from None
    for _ in range(POLLS):
        status = await _status(c)
        if status == 3:
            break
        if status != 2:
            raise ClientError(
                f"meter {c.serial} did not verify image {image.identifier} "
                f"({STATUS.get(status, status)})",
                retry=status != 4,
            )
        await asyncio.sleep(poll)
    else:
        raise ClientError(f"meter {c.serial} still verifying image {image.identifier}")
    info = (await c.get(18, IMAGE_TRANSFER, 7))["value"]
    named = [
        (
            int(i["value"][0]["value"]),
            bytes.fromhex(i["value"][1]["value"]).decode("ascii", "replace"),
        )
        for i in info
    ]
    if (image.size, image.identifier) not in named:
        raise ClientError(
            f"meter {c.serial} verified {named or 'nothing'}, not {image.identifier} "
            f"of {image.size} bytes"
        )


async def _transfer(c: MeterClient, image: Image) -> dict[str, Any]:
    if not (await c.get(18, IMAGE_TRANSFER, 5))["value"]:
        raise ClientError(f"meter {c.serial} has image transfer disabled")
    size = int((await c.get(18, IMAGE_TRANSFER, 2))["value"])
    if size <= 0:
        raise ClientError(f"meter {c.serial} gives an image block size of {size}")
    blocks = -(-image.size // size)
    await c.action(
        18,
        IMAGE_TRANSFER,
        1,
        codec.data(
            "structure",
            [
                codec.data("octet-string", image.identifier.encode().hex()),
                codec.data("double-long-unsigned", image.size),
            ],
        ),
    )
    missing = await _missing(c, blocks)
    had = blocks - len(missing)
    sent = 0
    for _ in range(ROUNDS):
        if not missing:
            break
        for n in missing:
            block = image.data[n * size : (n + 1) * size]
            await c.action(
                18,
                IMAGE_TRANSFER,
                2,
                codec.data(
                    "structure",
                    [
                        codec.data("double-long-unsigned", n),
                        codec.data("octet-string", block.hex()),
                    ],
                ),
            )
            sent += 1
        missing = await _missing(c, blocks)
    if missing:
        raise ClientError(
            f"meter {c.serial} still lacks {len(missing)} of {blocks} blocks after {ROUNDS} rounds"
        )
    return {"blocks": blocks, "block_size": size, "blocks_sent": sent, "resumed_with": had}


async def _activate(c: MeterClient, image: Image) -> dict[str, Any]:
    await c.action(18, IMAGE_TRANSFER, 4, codec.data("integer", 0))
    active = await _active(c)
    if active != image.identifier:
        raise ClientError(
            f"meter {c.serial} activated but reports firmware {active}, not {image.identifier}"
        )
    return {"active": active}


async def upgrade(
    c: MeterClient, image: Image, args: dict[str, Any], *, poll: float = 1.0
) -> dict[str, Any]:
    """Runs one phase of a firmware command on meter `c`; returns its outcome (with
    `then` when the activation waits for its time) or raises ClientError."""
    if args.get("identifier") not in (None, image.identifier):
        raise ClientError(
            f"image {image.sha256[:12]} is {image.identifier}, not {args['identifier']}"
        )
    async with c.associated():
        before = await _active(c)
        if before == image.identifier:
            return {"active": before, "already": True}
        if args.get("phase") == "activate":
            status = await _status(c)
            if status != 3:
                raise ClientError(
                    f"meter {c.serial} has no verified image to activate "
                    f"({STATUS.get(status, status)}); the transfer must run again"
                )
            return {"previous": before, **await _activate(c, image)}
        out: dict[str, Any] = {"previous": before, **await _transfer(c, image)}
        await _verify(c, image, poll)
        out["verified"] = True
        at = args.get("activate_at")
        if at is not None and int(at) > time.time():
            out["then"] = {
                "args": {**args, "phase": "activate", "not_before": int(at)},
            }
            return out
        out.update(await _activate(c, image))
        return out


def image_for(cache: dict[str, Image], load: Callable[[str], Image], sha: str) -> Image:
    """The image `sha` from the worker's cache or the node's firmware directory."""
    got = cache.get(sha)
    if got is None:
        try:
            got = load(sha)
        except FirmwareError as e:
            raise ClientError(str(e), retry=False) from None
        if len(cache) >= 4:
            cache.pop(next(iter(cache)))
        cache[sha] = got
    return got
