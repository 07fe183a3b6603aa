"""The streams of one call: :class:`EventStream` over a native job (socket wake-ups,
cancel and acknowledgement, checks on a call queued behind an unread stream) and
:class:`TextStream` over it. They know the engine, the session's :class:`OpenCalls`
registry and a :class:`Host` (the session's public face), never the session's
private state."""

from __future__ import annotations

import contextlib
import enum
import os
import socket
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable
from typing import Protocol

import anyio

from . import _bridge, _grammar_check, _logging
from .errors import GenerationError, GrammarCostError, MTPError, SessionBusyError
from .events import DoneEvent, EogEvent, Event, TokenEvent
from .options import GenerationOptions
from .stats import MTPStats

__all__ = ["EventStream", "Host", "OpenCalls", "StreamState", "TextStream"]

_QUEUE_CAPACITY = 512
# a call queued behind a stream that is still open checks on it this often, and warns
# after this long without a timeout (it never waits silently)
_QUEUED_CHECK_S = 0.5
_QUEUED_WARN_S = 10.0
# an open stream whose reader has not come back for this long counts as not being read
_IDLE_READER_S = 1.0


class StreamState(enum.Enum):
    """Where an :class:`EventStream` is: not submitted yet, submitted (events may
    come), or finished (terminal event read, failed, cancelled or closed)."""

    NEW = "not started"
    OPEN = "open"
    FINISHED = "finished"


class Host(Protocol):
    """What a stream needs of its session: its stats and whether it is closed."""

    def stats(self) -> MTPStats: ...

    @property
    def closed(self) -> bool: ...


class OpenCalls:
    """One session's calls: how many started, and the streams that started and have
    not finished, oldest first (weakly held). The session owns it and hands it in."""

    def __init__(self) -> None:
        self.started = 0
        self._open: list[weakref.ref[EventStream]] = []

    def add(self, stream: EventStream) -> None:
        self.started += 1
        self._open = [r for r in self._open if (st := r()) is not None and not st.finished]
        self._open.append(weakref.ref(stream))

    def blocking(self, stream: EventStream) -> EventStream | None:
        """An earlier stream that is open but has not been read for a while (``stream``
        may be waiting for it); None if every earlier one is being read."""
        idle_since = time.monotonic() - _IDLE_READER_S
        for ref in self._open:
            other = ref()
            if other is stream:
                return None
            if other is not None and other.idle_since(idle_since):
                return other
        return None


class EventStream:
    """The async iterator behind :meth:`MTP.stream_events`.

    The job is submitted when iteration starts (or at :meth:`start`). The worker
    pushes events into a native queue and writes a byte to a socket; we wait on that
    socket (asyncio or trio, through anyio) and drain every pending event per
    wake-up. If the stream is abandoned (break, exception, cancellation, timeout,
    garbage collection) the job is cancelled; the session's next call starts only
    after the worker has acknowledged it.
    """

    def __init__(
        self,
        host: Host,
        engine: Callable[[], _bridge.NativeEngine],
        calls: OpenCalls,
        prompt: list[int],
        opts: GenerationOptions,
        wait: bool,
        grammars: _grammar_check.GrammarChecker | None = None,
        grammar_step_budget: float | None = None,
    ) -> None:
        self._host = host
        self._grammars = grammars
        self._grammar_step_budget = grammar_step_budget
        self._engine = engine
        self._calls = calls
        self._prompt = prompt
        self._opts = opts
        self._wait = wait
        self._state = StreamState.NEW
        self._job: _bridge.NativeJob | None = None
        self._sock: socket.socket | None = None
        self._buffer: deque[_bridge.NativeEvent] = deque()
        self._got_event = False
        self._reader: object | None = None  # the task reading right now
        self._closing = False  # aclose() was called (from any task)
        self._started_at = 0.0
        self._last_read = 0.0  # monotonic time a reader last entered or left __anext__

    def __aiter__(self) -> EventStream:
        return self

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<mtpstream stream of {len(self._prompt)} prompt tokens, {self._state.value}>"

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def options(self) -> GenerationOptions:
        """The call's validated options."""
        return self._opts

    @property
    def finished(self) -> bool:
        return self._state is StreamState.FINISHED

    def idle_since(self, since: float) -> bool:
        """Open, and nobody has read it since monotonic time ``since``."""
        return not self.finished and self._reader is None and self._last_read < since

    def start(self) -> None:
        """Submit the job (so that a refused call raises now); once only."""
        if self._state is not StreamState.NEW:
            return
        engine = self._engine()
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        wfd = wsock.detach()
        try:
            self._job = _bridge.submit(
                engine, self._prompt, self._opts, wfd, self._wait, _QUEUE_CAPACITY, self._grammar_step_budget
            )
        except MTPError:
            rsock.close()  # the native side closed the write end
            self._state = StreamState.FINISHED
            raise
        except BaseException:
            rsock.close()  # e.g. a conversion error before native code took the write end
            os.close(wfd)
            self._state = StreamState.FINISHED
            raise
        self._sock = rsock
        self._started_at = time.monotonic()
        self._state = StreamState.OPEN
        self._calls.add(self)

    async def checked_start(self) -> None:
        """:meth:`start`, after the grammar's trial (:mod:`._grammar_check`) if it has one."""
        if self._state is StreamState.NEW:
            await _grammar_check.check_options(self._grammars, self._opts)
            self.start()

    async def __anext__(self) -> Event:
        if self._reader is not None:
            # never touch the socket the other task waits on
            raise SessionBusyError(
                "this stream is already being read by another task; read a stream from one task only"
            )
        if self.finished and not self._buffer:
            raise StopAsyncIteration
        self._reader = reader = object()
        self._last_read = time.monotonic()
        try:
            await self.checked_start()
            try:
                await self._fill()
            except BaseException:
                self._abandon()
                raise
            self._got_event = True
            return self._convert(self._buffer.popleft())
        finally:
            if self._reader is reader:
                self._reader = None
                self._last_read = time.monotonic()

    async def _fill(self) -> None:
        job = self._job
        assert job is not None
        while not self._buffer:
            self._buffer.extend(_bridge.drain(job))
            if self._buffer:
                return
            if self._sock is None:  # closed by aclose() from another task
                raise StopAsyncIteration
            await self._wait_wakeup()

    async def _wait_wakeup(self) -> None:
        sock = self._sock
        assert sock is not None
        timeout = self._opts.timeout
        if self._got_event:
            if timeout is None:
                await anyio.wait_readable(sock)
            else:
                with anyio.move_on_after(timeout) as scope:
                    await anyio.wait_readable(sock)
                if scope.cancelled_caught:
                    raise TimeoutError(f"no event from the generation within {timeout} s")
        else:
            await self._wait_first(sock, timeout)
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while sock.recv(4096):
                pass

    async def _wait_first(self, sock: socket.socket, timeout: float | None) -> None:
        """Wait for the first event, checking on a stream this call may be queued behind."""
        warned = False
        while True:
            waited = time.monotonic() - self._started_at
            step = _QUEUED_CHECK_S if timeout is None else max(0.0, min(_QUEUED_CHECK_S, timeout - waited))
            with anyio.move_on_after(step):
                await anyio.wait_readable(sock)
                return
            waited = time.monotonic() - self._started_at
            blocker = self._calls.blocking(self)
            if timeout is not None and waited >= timeout:
                if blocker is not None:
                    raise SessionBusyError(
                        f"no event within {timeout} s: this call is queued behind {blocker!r} on the "
                        "same session, which is still open but not being read. Read it to the end or "
                        "close it (await stream.aclose(), or open it with 'async with')"
                    )
                raise TimeoutError(f"no event from the generation within {timeout} s")
            if blocker is not None and not warned and waited >= _QUEUED_WARN_S:
                warned = True
                warnings.warn(
                    f"a call on {self._host!r} has waited {waited:.0f} s behind {blocker!r}, "
                    "which is still open but not being read; close it (await stream.aclose(), or "
                    "'async with') or read it to the end",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def _convert(self, ev: _bridge.NativeEvent) -> Event:
        if not _bridge.is_terminal(ev):
            return _bridge.event(ev, self._host.stats)
        self._close_socket()
        self._state = StreamState.FINISHED
        _logging.flush()
        if _bridge.is_cancelled(ev) and self._closing:  # aclose() from another task
            raise StopAsyncIteration
        try:
            return _bridge.event(ev, self._final_stats)
        except GenerationError as exc:
            if _grammar_check.remember_failure(self._grammars, self._opts, str(exc)):
                raise GrammarCostError(str(exc), field=self._opts.grammar_field) from None
            raise

    def _final_stats(self) -> MTPStats:
        return self._host.stats() if not self._host.closed else MTPStats()

    def _abandon(self) -> None:
        if self._job is not None and not self.finished:
            self._job.cancel()
        self._state = StreamState.FINISHED
        self._buffer.clear()
        self._close_socket()

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def aclose(self) -> None:
        """Stop the generation and wait until the worker has acknowledged it.

        Idempotent, and safe from any task: a task reading the stream meanwhile ends
        its iteration normally (``StopAsyncIteration``).
        """
        self._closing = True
        job = self._job
        if job is None or self.finished:
            if self._reader is None:
                self._abandon()
            return
        job.cancel()
        with anyio.CancelScope(shield=True):
            if self._reader is not None:
                # another task waits on the socket: let it see the cancellation itself
                while not job.finished:
                    await anyio.sleep(0.005)
                return
            await self._await_acknowledged(job)
        self._abandon()

    async def _await_acknowledged(self, job: _bridge.NativeJob) -> None:
        while not job.finished:
            _bridge.drain(job)
            if self._sock is None:
                break
            with anyio.move_on_after(0.05):
                await anyio.wait_readable(self._sock)
            with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
                while self._sock.recv(4096):
                    pass

    def __del__(self) -> None:
        job = self._job
        if job is not None and not self.finished:
            job.cancel()
        sock = self._sock
        if sock is not None:
            sock.close()


class TextStream:
    """The async iterator behind :meth:`MTP.stream`: the non-empty texts of an event stream."""

    def __init__(self, events: EventStream) -> None:
        self._events = events

    def __aiter__(self) -> TextStream:
        return self

    async def __anext__(self) -> str:
        while True:
            ev = await self._events.__anext__()
            if isinstance(ev, (TokenEvent, DoneEvent, EogEvent)) and ev.text:
                return ev.text

    async def aclose(self) -> None:
        """Stop the generation and wait until the worker has acknowledged it (idempotent)."""
        await self._events.aclose()

    async def __aenter__(self) -> TextStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
