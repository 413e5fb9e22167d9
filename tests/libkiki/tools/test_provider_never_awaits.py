"""libkiki.tools.provider.never_awaits: which tool functions are run as their call is read."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from libkiki.tools.provider import never_awaits

pytestmark = pytest.mark.unit


async def returns(args: Any, call: Any) -> Any:
    return {"text": args["text"]}


async def raises(args: Any, call: Any) -> Any:
    raise ValueError("no")


async def awaits(args: Any, call: Any) -> Any:
    await asyncio.sleep(0)
    return {}


async def enters(args: Any, call: Any) -> Any:
    async with asyncio.Lock():
        return {}


async def ticks() -> AsyncIterator[int]:
    yield 1


async def iterates(args: Any, call: Any) -> Any:
    async for n in ticks():
        return {"n": n}
    return {}


async def comprehends(args: Any, call: Any) -> Any:
    return [n async for n in ticks()]


async def awaits_in_a_comprehension(args: Any, call: Any) -> Any:
    return [await asyncio.sleep(0, n) for n in range(2)]


def plain(args: Any, call: Any) -> Any:
    return {}


class Callable:
    async def __call__(self, args: Any, call: Any) -> Any:
        return {}


@functools.wraps(returns)
async def wrapper(args: Any, call: Any) -> Any:
    return await returns(args, call)


@pytest.mark.parametrize("func", [returns, raises])
def test_a_body_without_await_never_awaits(func: Any) -> None:
    assert never_awaits(func)


@pytest.mark.parametrize(
    "func",
    [
        awaits,
        enters,
        iterates,
        comprehends,
        awaits_in_a_comprehension,
        wrapper,
        plain,
        Callable(),
        functools.partial(returns),
    ],
)
def test_anything_that_can_wait_or_is_not_an_async_function_is_not_taken(func: Any) -> None:
    assert not never_awaits(func)
