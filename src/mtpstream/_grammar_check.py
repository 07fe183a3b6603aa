"""A real, bounded trial of every grammar before the engine builds it.

The static limits of :mod:`._grammar_limits` and the stack model of :mod:`._gbnf`
refuse the grammars known to blow up, but a heuristic cannot prove that llama.cpp will
build and apply a grammar in bounded time. So a session's :class:`GrammarChecker`
builds every grammar for real, with the model's own vocabulary and the same libllama,
in a long-lived child process (:mod:`._grammar_child`) and plays a few generations
with it. The child runs under a memory cap and is killed when the trial outlasts the
budget; an explosion then costs a killed and restarted child, never the worker or the
event loop.

* A trial builds the grammar and plays :data:`TRIAL_PATHS` generations of up to
  :data:`TRIAL_STEPS` tokens each (a random allowed token, the longest, the shortest);
  every step applies the grammar over the whole vocabulary and accepts one token.
* Refused (:class:`InvalidOptionError`, the field the grammar came from): the trial
  used more than ``budget`` CPU seconds in all (the child's ``RLIMIT_CPU``, whole
  seconds, ends it; a wall-clock deadline of :data:`WALL_FACTOR` times that backs it
  up), one step more than ``step_budget``, or the child died (the memory cap). CPU
  time, not wall time: a loaded machine does not make a fine grammar fail.
* Verdicts are cached by (vocabulary file, budgets, SHA-256 of the grammar): a grammar
  is tried once per process; a cache hit costs a hash and needs no thread.
* One trial at a time per checker; at most :data:`MAX_WAITING` more wait, beyond that
  :class:`SessionBusyError`. The trial runs in a worker thread
  (:func:`anyio.to_thread.run_sync`), never on the event loop.

What stays unbounded: a grammar whose cost explodes only after more tokens than the
trial plays (e.g. behind a long literal prefix). The engine's per-step budget ends such
a call with :class:`GenerationError` once a step *returns* over its budget; a single
llama.cpp call that never returns cannot be interrupted in-process.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from ._loader import _native
from .errors import GenerationError, InvalidOptionError, MTPError, SessionBusyError, SessionClosedError

if TYPE_CHECKING:
    from .options import GenerationOptions, SessionOptions

__all__ = [
    "HOST_EXECUTABLE",
    "MAX_WAITING",
    "TRIAL_PATHS",
    "TRIAL_STEPS",
    "GrammarChecker",
    "check_options",
    "for_session",
    "host_command",
]

TRIAL_STEPS = 4
"""Tokens per trial generation."""
TRIAL_PATHS = 3
"""Trial generations per grammar (random, longest token, shortest token)."""
MAX_WAITING = 8
"""Trials that may wait for a busy checker; more raise :class:`SessionBusyError`."""
MEMORY_BYTES = 4 * 2**30
"""The child's address-space cap (``RLIMIT_AS``)."""
WALL_FACTOR, WALL_EXTRA_S = 4.0, 10.0
"""Past ``WALL_FACTOR * budget + WALL_EXTRA_S`` wall-clock seconds a trial is killed too
(the budget itself is CPU time: the child's ``RLIMIT_CPU``)."""
START_TIMEOUT_S = 120.0
"""Loading the vocabulary in the child may take this long."""
COSTLY = "the grammar is too costly"
"""How every refusal for cost begins, here and in the engine's messages."""
_CACHE_SIZE = 1024
_CHILD = Path(__file__).with_name("_grammar_child.py")

_cache: collections.OrderedDict[tuple[Any, ...], str | None] = collections.OrderedDict()
_cache_lock = threading.Lock()


def _cached(key: tuple[Any, ...]) -> tuple[bool, str | None]:
    with _cache_lock:
        if key not in _cache:
            return False, None
        _cache.move_to_end(key)
        return True, _cache[key]


def _remember(key: tuple[Any, ...], verdict: str | None) -> None:
    with _cache_lock:
        _cache[key] = verdict
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)


class _ChildDied(Exception):
    pass


class _Child:
    """One running checker process and its pipes."""

    release: threading.Event  # ends the thread that started the child (see _start_child)

    def __init__(self, model_path: Path, memory: int) -> None:
        self.release = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(_CHILD), str(model_path), str(memory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            # an abort (llama.cpp's std::bad_alloc under the cap) must not start gdb
            # for a backtrace on the answer pipe
            env={**os.environ, "GGML_NO_BACKTRACE": "1"},
        )
        self.buf = b""
        try:
            ready = self.read_line(time.monotonic() + START_TIMEOUT_S)
        except (TimeoutError, _ChildDied):
            self.kill()
            raise GenerationError("the grammar checker could not load the model's vocabulary") from None
        if "ready" not in ready:
            self.kill()
            raise GenerationError(f"the grammar checker could not start: {ready.get('error')}")

    def read_line(self, deadline: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise _ChildDied
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        try:
            out: dict[str, Any] = json.loads(line)
        except ValueError:  # e.g. what an abort printed on its way out
            raise _ChildDied from None
        return out

    def ask(self, request: dict[str, Any], deadline: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            raise _ChildDied from None
        return self.read_line(deadline)

    def kill(self) -> int:
        """End the child; its exit code (negative: the signal that ended it)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        code = self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # a request left in a dead child's pipe
                    pipe.close()
        self.release.set()
        return code


class GrammarChecker:
    """Tries grammars for one vocabulary (the model file at ``model_path``).

    ``budget``: seconds the whole trial of one grammar may take; ``step_budget``:
    seconds one of its steps may take. The child starts on the first trial.
    """

    def __init__(
        self, model_path: Path, budget: float, step_budget: float, memory: int = MEMORY_BYTES
    ) -> None:
        st = model_path.stat()
        self._vocab_key = (str(model_path.resolve()), st.st_size, st.st_mtime_ns)
        self._path, self._memory = model_path, memory
        self.budget, self.step_budget = budget, step_budget
        self._lock = threading.Lock()  # one trial at a time; guards _child
        self._count_lock = threading.Lock()
        self._waiting = 0
        self._child: _Child | None = None
        self._closed = False
        self.trials = 0  # trials run (not cache hits), for tests and stats
        self.restarts = 0  # children killed after a trial over the budget or died

    def _key(self, grammar: str) -> tuple[Any, ...]:
        digest = hashlib.sha256(grammar.encode("utf-8", "surrogatepass")).hexdigest()
        return (self._vocab_key, self.budget, self.step_budget, TRIAL_STEPS, TRIAL_PATHS, digest)

    async def check_async(self, grammar: str, field: str) -> None:
        """:meth:`check` off the event loop (a cache hit answers at once)."""
        hit, verdict = _cached(self._key(grammar))
        if hit:
            _raise(verdict, field)
            return
        await anyio.to_thread.run_sync(self.check, grammar, field)

    def remember(self, grammar: str, verdict: str) -> None:
        """Record ``verdict`` (why ``grammar`` is refused) as if a trial had found it."""
        _remember(self._key(grammar), verdict)

    def check(self, grammar: str, field: str) -> None:
        """Try ``grammar`` (blocking, at most about ``budget`` seconds plus the wait
        for earlier trials).

        Raises:
            InvalidOptionError: the grammar is too costly (``field`` names the option).
            SessionBusyError: more than :data:`MAX_WAITING` trials are waiting.
            SessionClosedError: the session was closed before or during the trial.
            GenerationError: the checker could not load the vocabulary.
        """
        key = self._key(grammar)
        hit, verdict = _cached(key)
        if not hit:
            with self._count_lock:
                if self._waiting >= MAX_WAITING + 1:
                    raise SessionBusyError(
                        f"grammar checks are queued beyond the limit ({MAX_WAITING}); retry later"
                    )
                self._waiting += 1
            try:
                with self._lock:
                    hit, verdict = _cached(key)  # an earlier trial may have answered it
                    if not hit:
                        verdict = self._trial(grammar)
                        _remember(key, verdict)
            finally:
                with self._count_lock:
                    self._waiting -= 1
        _raise(verdict, field)

    def _trial(self, grammar: str) -> str | None:
        """Why the grammar is refused, or None (called with the lock held)."""
        if self._closed:
            raise SessionClosedError("the session was closed")
        if self._child is None:
            self._child = _start_child(self._path, self._memory)
        self.trials += 1
        request = {
            "grammar": grammar,
            "steps": TRIAL_STEPS,
            "paths": TRIAL_PATHS,
            "seed": 0,
            "budget": self.budget,
        }
        try:
            res = self._child.ask(request, time.monotonic() + WALL_FACTOR * self.budget + WALL_EXTRA_S)
        except (TimeoutError, _ChildDied) as exc:
            code = self._child.kill()
            self._child = None
            if self._closed:  # close() killed it: no verdict
                raise SessionClosedError("the session was closed") from None
            self.restarts += 1
            if isinstance(exc, TimeoutError) or code == -signal.SIGXCPU:
                return (
                    f"the grammar is too costly: building it and applying it to {TRIAL_STEPS} tokens "
                    f"took more than the grammar budget of {self.budget:g} s"
                )
            return "the grammar is too costly: building or applying it exhausted the checker's memory"
        slowest = max(res["step_s"], default=0.0)
        if res["build_s"] > self.step_budget or slowest > self.step_budget:
            what = "building it" if res["build_s"] > self.step_budget else "one step of applying it"
            took = max(res["build_s"], slowest)
            return (
                f"the grammar is too costly: {what} took {took:.2f} s; the grammar step budget "
                f"is {self.step_budget:g} s"
            )
        return None  # also when llama.cpp cannot parse it: the engine reports that error

    def close(self) -> None:
        """Stop the child (idempotent). A running trial is cut short (its caller gets
        :class:`SessionClosedError`), so this waits for nothing costly."""
        self._closed = True
        child = self._child
        if child is not None and child.proc.poll() is None:
            child.proc.kill()
        with self._lock:
            if self._child is not None:
                self._child.kill()
                self._child = None


def _start_child(path: Path, memory: int) -> _Child:
    """A child started from a thread of its own that lives until the child is killed:
    the child asks the kernel to end it with its parent (PR_SET_PDEATHSIG), and for the
    kernel that parent is the starting *thread*, so a worker thread that anyio ends
    when idle (or ``*_sync``'s event loop ends) would take the child with it."""
    out: list[_Child | BaseException] = []
    started = threading.Event()

    def keep() -> None:
        try:
            child = _Child(path, memory)
        except BaseException as exc:
            out.append(exc)
            started.set()
            return
        out.append(child)
        started.set()
        child.release.wait()

    threading.Thread(target=keep, name="mtpstream-grammar-child", daemon=True).start()
    started.wait()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def _raise(verdict: str | None, field: str) -> None:
    if verdict is not None:
        raise InvalidOptionError(f"invalid option '{field}': {verdict}", field=field)


def for_session(model_path: Path, options: SessionOptions) -> GrammarChecker | None:
    """The checker a session with ``options`` uses (None: ``grammar_budget=None``)."""
    if options.grammar_budget is None:
        return None
    step = options.grammar_step_budget if options.grammar_step_budget is not None else options.grammar_budget
    return GrammarChecker(model_path, options.grammar_budget, step, options.grammar_memory)


HOST_EXECUTABLE = Path(_native.__file__).with_name("_grammar_host")
"""The grammar host the engine starts to run its calls' grammars (built with the extension)."""


def host_command(model_path: Path, options: SessionOptions) -> list[str]:
    """The grammar host's command line for a session (empty: ``grammar_process=False``).

    Raises:
        MTPError: the host executable is missing from the installation.
    """
    if not options.grammar_process:
        return []
    if not os.access(HOST_EXECUTABLE, os.X_OK):
        raise MTPError(
            f"the grammar host {HOST_EXECUTABLE} is missing or not executable: reinstall mtpstream "
            "(or pass grammar_process=False to run grammars on the worker thread)"
        )
    return [str(HOST_EXECUTABLE), str(model_path), str(options.grammar_memory)]


def remember_failure(checker: GrammarChecker | None, opts: GenerationOptions, message: str) -> bool:
    """Whether a call ended because its grammar was too costly in the engine (a step
    over the step budget, or one that did not finish and had the grammar host
    killed). If so, the same grammar is refused up front from now on, as if its trial
    had failed, so that a client repeating it costs a cache hit, not another stalled
    worker."""
    if not (opts.grammar and message.startswith(COSTLY)):
        return False
    if checker is not None:
        checker.remember(opts.grammar, f"{message} (in an earlier call)")
    return True


async def check_options(checker: GrammarChecker | None, opts: GenerationOptions) -> None:
    """Try the call's grammar, if any (see :meth:`GrammarChecker.check`)."""
    if checker is not None and opts.grammar:
        await checker.check_async(opts.grammar, opts.grammar_field)
