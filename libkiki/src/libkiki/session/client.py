"""The remote client's asyncio layer: one WebSocket to a session, moving the protocol's frames.

All decisions are :class:`~libkiki.session.protocol.SessionProtocol`'s; this module connects,
reads frames into it, sends what it queues, and turns its events into awaited results and
iterated changes. One task (the reader) is owned by the client and ends with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Self

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from libkiki.errors import (
    Conflict,
    InvalidParams,
    KikiError,
    LimitExceeded,
    NotFound,
    PeerGone,
    PermissionDenied,
    Timeout,
    Unavailable,
)
from libkiki.session.address import claims_of, redact, split_token
from libkiki.session.outcomes import (
    MAX_INPUT,
    error_for_close,
    is_final,
    new_intent,
    outcome,
    plain,
)
from libkiki.session.protocol import (
    DEFAULT_MAX_AWARENESS,
    DEFAULT_MAX_DOCUMENT,
    DeviceChanged,
    PresenceChanged,
    ResultChanged,
    SessionProtocol,
    Synced,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE: Final = 16 << 20  # a join's step 2 carries the whole document
DEFAULT_MAX_CHANGES: Final = 1024  # distinct device keys a changes() reader may fall behind by
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
DEFAULT_CALL_TIMEOUT: Final = 30.0
# An HTTP answer in place of the upgrade (the relay's 404 for a name no session may have, say).
_BY_STATUS: Final[dict[int, type[KikiError]]] = {
    400: InvalidParams,
    401: PermissionDenied,
    403: PermissionDenied,
    404: NotFound,
}


class SessionClient:
    """A session joined as a remote agent: its device's state, intents and their results.

    ::

        async with SessionClient("ws://host:8765/session/kitchen?token=...") as s:
            s.state()                                  # the device map, as plain JSON
            out = await s.call("dev.kiki.media.play", {}, timeout=10)
            async for key, value in s.changes():       # device keys as they change
                ...
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_changes: int = DEFAULT_MAX_CHANGES,
        max_input: int = MAX_INPUT,
        max_document: int = DEFAULT_MAX_DOCUMENT,
        max_awareness: int = DEFAULT_MAX_AWARENESS,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self._url, self._first_token, token = split_token(url, token)
        self.claims = claims_of(token)
        self.sub: str = self.claims["sub"]
        self.role: str | None = self.claims.get("role")
        self.where = redact(url)
        self._max_message = max_message
        self._max_changes = max_changes
        self._max_input = max_input
        self._connect_timeout = connect_timeout
        # Past either bound the connection ends with LimitExceeded (SessionProtocol).
        self.protocol = SessionProtocol(max_document=max_document, max_awareness=max_awareness)
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._watchers: set[_Changes] = set()
        self._presence = asyncio.Event()
        # Why the connection ended: None while it is open or after this end closed it.
        self.error: KikiError | None = None
        self._closing = False

    # -- lifetime --------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            async with asyncio.timeout(self._connect_timeout):
                self._ws = await connect(
                    self._url, max_size=self._max_message, compression=None, open_timeout=None
                )
                self.protocol.open(self._first_token)
                # Refused at once (a bad token): the reader finds the close frame and says why.
                with contextlib.suppress(ConnectionClosed):
                    await self._flush()
                self._reader = asyncio.create_task(self._read(self._ws))
                await self._wait_synced()
        except TimeoutError:
            await self._abort()
            raise Timeout(f"{self.where} did not sync within {self._connect_timeout:g} s") from None
        except InvalidStatus as exc:
            await self._abort()
            status = exc.response.status_code
            cls = _BY_STATUS.get(status, Unavailable)
            raise cls(f"{self.where} answered HTTP {status}") from None
        except (InvalidURI, ValueError) as exc:
            await self._abort()
            raise InvalidParams(f"not a session URL: {self.where}: {exc}") from None
        except (OSError, InvalidHandshake) as exc:
            await self._abort()
            raise Unavailable(f"cannot reach {self.where}: {exc}") from None
        except BaseException:
            await self._abort()
            raise
        return self

    async def _wait_synced(self) -> None:
        assert self._reader is not None
        synced = asyncio.ensure_future(self._synced.wait())
        try:
            await asyncio.wait({synced, self._reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            synced.cancel()
        if not self._synced.is_set():
            raise self.error or PeerGone(f"{self.where} closed before the document synced")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Withdraw this client's presence (if it set one) and close the connection."""
        if self._closing:
            return
        self._closing = True
        if self._ws is not None and self.protocol.awareness.get_local_state() is not None:
            self.protocol.set_presence(None)
            with contextlib.suppress(ConnectionClosed):
                await self._flush()
        await self._abort()
        self._end(None)

    async def _abort(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    # -- reading ---------------------------------------------------------------------------------

    async def _read(self, ws: ClientConnection) -> None:
        error: KikiError | None = None
        try:
            async for message in ws:
                self.protocol.receive(message)
                self._dispatch()  # before any await: a result or change is told at once
                await self._flush()
        except ConnectionClosed:
            pass
        except KikiError as exc:
            error = exc
            await ws.close(exc.ws_close_code, f"{type(exc).__name__}: {exc}"[:123])
        except Exception:
            log.exception("reading %s failed", self.where)
            error = KikiError("the session client failed (see its log)")
            await ws.close(1011)
        if error is None and not self._closing:
            received = ws.protocol.close_rcvd
            if received is not None:
                error = error_for_close(received.code, received.reason)
            else:
                error = error_for_close(ws.close_code, "")
            log.info("%s closed the connection: %s", self.where, error)
        self._end(error)

    def _dispatch(self) -> None:
        for event in self.protocol.events():
            if isinstance(event, DeviceChanged):
                if self._watchers:  # followed only while someone reads the changes
                    value = plain(event.value)
                    for watcher in tuple(self._watchers):
                        watcher.push(event.key, value)
            elif isinstance(event, ResultChanged):
                waiter = self._waiting.get(event.intent_id)
                if waiter is not None and not waiter.done() and is_final(event.result):
                    waiter.set_result(event.result)
            elif isinstance(event, PresenceChanged):
                self._presence.set()
            elif isinstance(event, Synced):
                self._synced.set()

    def _end(self, error: KikiError | None) -> None:
        if self.error is None:
            self.error = error
        gone = error or PeerGone(f"the connection to {self.where} is closed")
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(gone)
        for watcher in tuple(self._watchers):
            watcher.end(error)
        self._presence.set()

    async def _flush(self) -> None:
        assert self._ws is not None
        for frame in self.protocol.data_to_send():
            await self._ws.send(frame)

    async def _send(self) -> None:
        """Send what the protocol queued; a closed connection raises why it closed, once the
        reader has read the close frame."""
        try:
            await self._flush()
        except ConnectionClosed:
            if self._reader is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(self._reader)
            raise self.error or PeerGone(f"the connection to {self.where} is closed") from None

    def _check_open(self) -> None:
        if self.error is not None:
            raise self.error
        if self._closing or self._ws is None:
            raise PeerGone(f"the connection to {self.where} is closed")

    # -- the API ---------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The device's live state: the ``device`` map as plain JSON values."""
        value: dict[str, Any] = plain(self.protocol.device.to_py() or {})
        return value

    def result(self, intent_id: str) -> dict[str, Any] | None:
        """The result written for ``intent_id`` so far (``running`` or final), if any."""
        value = self.protocol.results.get(intent_id)
        return plain(value) if isinstance(value, dict) else None

    async def call(
        self,
        tool: str,
        input: Any = None,
        *,
        timeout: float = DEFAULT_CALL_TIMEOUT,  # noqa: ASYNC109 -- also names it in the error
        deadline: datetime | None = None,
        intent_id: str | None = None,
    ) -> Any:
        """Ask the device to call ``tool`` with ``input`` and wait for its final result.

        Returns the tool's output, or raises the error the result names
        (:class:`PermissionDenied` when refused, :class:`Timeout` when expired, the tool's own
        error otherwise). :class:`Timeout` too when no final result comes within ``timeout``
        seconds, sending the intent included: the intent stays in the session, and the device
        may still carry it out (give ``deadline`` to bound that). Retrying with the same
        ``intent_id`` after a lost connection runs the call at most once; a call with the id of
        one this client still waits for is :class:`Conflict`.
        """
        self._check_open()
        if not timeout > 0:
            raise InvalidParams(f"a timeout is seconds, more than 0, not {timeout!r}")
        if self.role not in (None, "controller", "device"):
            raise PermissionDenied(f"a token of role {self.role} cannot send intents")
        intent_id = intent_id or uuid.uuid4().hex
        if intent_id in self._waiting:
            raise Conflict(f"another call of this client waits for intent {intent_id} already")
        intent = new_intent(
            intent_id,
            tool,
            {} if input is None else input,
            by=self.sub,
            now=datetime.now(UTC),
            deadline=deadline,
            max_input=self._max_input,
        )
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[intent_id] = waiter
        try:
            # The send too: a relay that stopped reading holds it as long as it stalls.
            async with asyncio.timeout(timeout):
                existing = self.protocol.results.get(intent_id)
                if isinstance(existing, dict) and is_final(existing):
                    waiter.set_result(existing)
                elif intent_id not in self.protocol.intents:
                    self.protocol.add_intent(intent)
                    await self._send()
                result = await waiter
        except TimeoutError:
            raise Timeout(
                f"no result for {tool} within {timeout:g} s (intent {intent_id})"
            ) from None
        finally:
            del self._waiting[intent_id]
        return outcome(result)

    def changes(self) -> _Changes:
        """An async iterator of ``(key, value)`` as the device's state changes (value None when a
        key goes), from the moment it is made: make it, read :meth:`state`, then iterate, and
        nothing falls between. A reader that falls behind gets each key's latest value once; one
        more than ``max_changes`` keys behind ends with :class:`LimitExceeded`. The iteration
        ends when the client closes, or raises the error the relay closed it with."""
        self._check_open()
        watcher = _Changes(self, self._max_changes)
        self._watchers.add(watcher)
        self.protocol.follow_device(True)
        return watcher

    def _unwatch(self, watcher: _Changes) -> None:
        self._watchers.discard(watcher)
        if not self._watchers:
            self.protocol.follow_device(False)

    def peers(self) -> dict[int, dict[str, Any]]:
        """Who else is here: the other clients' awareness states by client id."""
        return self.protocol.peers()

    async def set_presence(self, state: dict[str, Any] | None) -> None:
        """Tell the others who this client is (awareness); None withdraws it. An observer's
        token may not: the relay closes it for any state it sends."""
        self._check_open()
        self.protocol.set_presence(state)
        await self._send()

    async def presence_changed(self) -> None:
        """Wait until the others' awareness states change (or the connection ends)."""
        self._presence.clear()
        await self._presence.wait()


class _Changes:
    """One reader of the device's changes, coalesced by key while it is behind."""

    def __init__(self, client: SessionClient, limit: int) -> None:
        self._client = client
        self._limit = limit
        self._pending: OrderedDict[str, Any] = OrderedDict()
        self._wake = asyncio.Event()
        self._ended = False
        self._error: KikiError | None = None

    def push(self, key: str, value: Any) -> None:
        self._pending.pop(key, None)
        self._pending[key] = value
        if len(self._pending) > self._limit:
            self._pending.clear()
            self.end(LimitExceeded(f"the reader fell more than {self._limit} keys behind"))
        self._wake.set()

    def end(self, error: KikiError | None) -> None:
        if not self._ended:
            self._ended, self._error = True, error
            self._client._unwatch(self)
        self._wake.set()

    def __aiter__(self) -> AsyncIterator[tuple[str, Any]]:
        return self

    async def __anext__(self) -> tuple[str, Any]:
        while not self._pending:
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        return self._pending.popitem(last=False)

    def close(self) -> None:
        """Stop receiving changes (what is pending is dropped)."""
        self._pending.clear()
        self.end(None)
