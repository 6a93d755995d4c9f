"""The subscription's reply parser (coordinator._compat.redispy) on a stream fed by hand:
an oversized bulk string is discarded as it arrives, also when the read is interrupted
halfway."""

from __future__ import annotations

import asyncio
import itertools
from types import SimpleNamespace

import pytest
from redis._parsers import Encoder

from coordinator._compat.redispy import CHUNK, subscription_parser
from coordinator.contract.events import Oversized


def push(data: bytes, resp3: bool = True) -> bytes:
    head = b">3\r\n" if resp3 else b"*3\r\n"
    return head + b"$7\r\nmessage\r\n$2\r\nch\r\n$%d\r\n%s\r\n" % (len(data), data)


def connected(parser_class: type | None) -> tuple[object, asyncio.StreamReader]:
    assert parser_class is not None, "the installed redis-py is one the suite ran"
    reader = asyncio.StreamReader()
    parser = parser_class(65536)
    parser.on_connect(SimpleNamespace(_reader=reader, encoder=Encoder("utf-8", "strict", False)))
    return parser, reader


async def read(parser: object, resp3: bool, timeout: float) -> object:
    async with asyncio.timeout(timeout):
        if resp3:
            return await parser.read_response(push_request=True)  # type: ignore[attr-defined]
        return await parser.read_response()  # type: ignore[attr-defined]


@pytest.mark.parametrize("resp3", [True, False], ids=["RESP3", "RESP2"])
async def test_an_oversized_bulk_is_discarded_and_the_next_reply_is_intact(resp3: bool) -> None:
    parser, reader = connected(subscription_parser("3" if resp3 else "2"))
    big = bytes(range(256)) * 1000  # 256,000 bytes, with CRLFs inside
    first, second = push(big, resp3), push(b"hello", resp3)
    # Fed in pieces, each read interrupted (a pub/sub get_message timeout) halfway.
    cuts = [0, 20, 3 * CHUNK + 7, 200_000, len(first)]
    for start, end in itertools.pairwise(cuts[:-1]):  # the last piece is fed below
        reader.feed_data(first[start:end])
        with pytest.raises(TimeoutError):
            await read(parser, resp3, 0.02)
    reader.feed_data(first[cuts[-2]:] + second)
    reply = await read(parser, resp3, 1)
    assert reply[:2] == [b"message", b"ch"]  # type: ignore[index]
    assert isinstance(reply[2], Oversized) and reply[2].length == len(big)  # type: ignore[index]
    assert await read(parser, resp3, 1) == [b"message", b"ch", b"hello"]


async def test_a_bulk_within_the_limit_is_read_as_usual() -> None:
    parser, reader = connected(subscription_parser("3"))
    body = b"y" * 4096
    reader.feed_data(push(body))
    assert await read(parser, True, 1) == [b"message", b"ch", body]
