"""Rendering chat templates with time and size limits.

A chat template is a Jinja program; the model's own comes from the GGUF file and a
request may bring another. Both render in :class:`_LimitedEnvironment`, Jinja's
immutable sandbox (what llama-cpp-python's ``Jinja2ChatFormatter`` uses, with the same
options, globals and ``tojson``) plus limits that make a runaway template fail fast
with :class:`TemplateLimitError` instead of freezing the process or eating its memory:

* a wall-clock budget (:data:`RENDER_TIMEOUT_S`) checked at every loop iteration
  (each ``for`` iterable is wrapped at parse time), call, filter, operator and
  attribute lookup;
* ``range()`` of at most :data:`MAX_RANGE` items;
* no value (string, list) larger than :func:`value_limit` characters: ``*``, ``+``,
  ``~``, ``%``, ``str.format``, ``replace``, ``join``, ``indent``, ``center``... are
  checked before they allocate when they can multiply a size, after otherwise;
* at most :func:`budget_limit` characters produced over the whole rendering, and an
  output no larger than :func:`value_limit`;
* integer arguments of calls and filters up to :data:`MAX_INT_ARG`, integer results up
  to :data:`MAX_INT_BITS` bits; templates up to :data:`MAX_TEMPLATE_CHARS` characters.

Limits scale with the input (the messages' text), so long conversations render.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from jinja2 import nodes
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

__all__ = [
    "MAX_INT_ARG",
    "MAX_RANGE",
    "MAX_TEMPLATE_CHARS",
    "RENDER_TIMEOUT_S",
    "TemplateLimitError",
    "compile_template",
    "render_template",
]

RENDER_TIMEOUT_S = 2.0
MAX_RANGE = 100_000
MAX_INT_ARG = 100_000
MAX_INT_BITS = 4096
MAX_TEMPLATE_CHARS = 128 * 1024
MAX_JSON_INDENT = 16
_VALUE_BASE = 4_000_000
_VALUE_PER_INPUT = 4
_BUDGET_BASE = 32_000_000
_BUDGET_PER_INPUT = 32
# a width or precision of 4+ digits in a %- or {}-format spec
_WIDE_FORMAT = re.compile(r"%[-#0 +]*\d*\.?\d{4,}|\{[^{}]*:[^{}]*\d{4,}[^{}]*\}")
_ITER = "mtpstream_guarded_iter"
_SIZED = "mtpstream_sized"


class TemplateLimitError(Exception):
    """A template went over a time or size limit while rendering."""


def value_limit(input_chars: int) -> int:
    """The largest string or list a rendering of ``input_chars`` of messages may build."""
    return _VALUE_BASE + _VALUE_PER_INPUT * input_chars


def budget_limit(input_chars: int) -> int:
    """Characters a rendering of ``input_chars`` of messages may produce in all."""
    return _BUDGET_BASE + _BUDGET_PER_INPUT * input_chars


class _Budget:
    def __init__(self, input_chars: int, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.max_value = value_limit(input_chars)
        self.left = budget_limit(input_chars)

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"the chat template took longer than {self.timeout:g} s to render")

    def fits(self, size: int, what: str) -> None:
        if size > self.max_value:
            raise TemplateLimitError(
                f"{what} would make a value of {size} items, above the limit of {self.max_value}"
            )

    def account(self, value: Any) -> Any:
        if isinstance(value, str):
            size = len(value)
        elif isinstance(value, (list, tuple)):
            size = len(value) + sum(len(x) for x in value if isinstance(x, str))
        elif isinstance(value, dict):
            size = len(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            if value.bit_length() > MAX_INT_BITS:
                raise TemplateLimitError(f"an integer of more than {MAX_INT_BITS} bits")
            return value
        else:
            return value
        self.fits(size, "an operation")
        self.left -= size
        if self.left < 0:
            raise TemplateLimitError("the chat template built too much text in all")
        return value


_state = threading.local()


def _budget() -> _Budget:
    b: _Budget | None = getattr(_state, "budget", None)
    if b is None:  # rendering outside render_template (no limits were set up)
        raise TemplateLimitError("chat templates render only through render_template")
    return b


def _size(v: Any) -> int:
    return len(v) if isinstance(v, (str, list, tuple, dict)) else 0


def _check_args(args: Iterable[Any]) -> None:
    for a in args:
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_INT_ARG:
            raise TemplateLimitError(f"an integer argument of {a} is above the limit of {MAX_INT_ARG}")


def _check_format(fmt: Any) -> None:
    if isinstance(fmt, str) and _WIDE_FORMAT.search(fmt):
        raise TemplateLimitError("a format width or precision of 1000 or more")


def _replace_size(s: Any, old: Any, new: Any, count: Any = -1) -> int:
    if not (isinstance(s, str) and isinstance(old, str) and isinstance(new, str)):
        return 0
    n = len(s) + 1 if not old else s.count(old)
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    return len(s) + n * max(0, len(new) - len(old))


def _join_size(sep: Any, items: Any) -> int:
    if not isinstance(items, (list, tuple)):
        return 0
    return sum(_size(x) for x in items) + _size(sep) * max(0, len(items) - 1)


def _precheck(b: _Budget, obj: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Sizes of the calls that multiply one before they allocate."""
    _check_args(args)
    _check_args(kwargs.values())
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if isinstance(owner, str):
        if name == "replace" and len(args) >= 2:
            b.fits(_replace_size(owner, *args[:3]), "str.replace")
        elif name == "join" and args:
            items = args[0] if isinstance(args[0], (list, tuple)) else list(args[0])
            b.fits(_join_size(owner, items), "str.join")
        elif name in ("ljust", "rjust", "center", "zfill") and args and isinstance(args[0], int):
            b.fits(args[0], f"str.{name}")
        elif name == "expandtabs":
            b.fits(len(owner) * (args[0] if args and isinstance(args[0], int) else 8), "str.expandtabs")


def _filter_precheck(b: _Budget, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    _check_args(args[1:])
    _check_args(kwargs.values())
    value = args[0] if args else None
    rest = list(args[1:])
    if name == "replace" and len(rest) >= 2:
        b.fits(_replace_size(str(value), *rest[:3]), "replace")
    elif name == "join":
        items = list(value) if isinstance(value, Iterable) and not isinstance(value, str) else []
        b.fits(_join_size(rest[0] if rest else kwargs.get("d", ""), items), "join")
    elif name == "indent":
        width = rest[0] if rest else kwargs.get("width", 4)
        lines = str(value).count("\n") + 1
        b.fits(len(str(value)) + lines * (width if isinstance(width, int) else len(str(width))), "indent")
    elif name in ("center", "truncate", "wordwrap") and rest and isinstance(rest[0], int):
        b.fits(max(rest[0], 2 * len(str(value))), name)
    elif name == "format":
        _check_format(value)
    elif name == "tojson":
        indent = rest[1] if len(rest) > 1 else kwargs.get("indent")
        if isinstance(indent, int) and indent > MAX_JSON_INDENT:
            raise TemplateLimitError(f"tojson indent above {MAX_JSON_INDENT}")


def _guard_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    skip = 1 if getattr(f, "jinja_pass_arg", None) is not None else 0  # context/environment first

    @functools.wraps(f)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        b = _budget()
        b.tick()
        _filter_precheck(b, name, args[skip:], kwargs)
        return b.account(f(*args, **kwargs))

    return guarded


class _GuardedIterator:
    __slots__ = ("_it", "_n")

    def __init__(self, it: Iterator[Any]) -> None:
        self._it = it
        self._n = 0

    def __iter__(self) -> _GuardedIterator:
        return self

    def __next__(self) -> Any:
        self._n += 1
        if not self._n & 63:
            _budget().tick()
        return next(self._it)


def _guarded_iter(seq: Any) -> Any:
    """What a template's ``for`` loops over: ``seq``, with the deadline checked as it goes."""
    if not isinstance(seq, Iterable):
        return seq  # Jinja's own errors for non-iterables
    return _GuardedIterator(iter(seq))


def _sized(value: Any) -> Any:
    return _budget().account(value)


def _safe_range(*args: int) -> range:
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise TemplateLimitError(f"range() of {len(r)} items, above the limit of {MAX_RANGE}")
    return r


class _GuardLoops(NodeTransformer):
    """Wraps each ``for`` iterable in :func:`_guarded_iter` and each ``~`` in :func:`_sized`."""

    def __init__(self, env: _LimitedEnvironment) -> None:
        self.env = env

    def _call(self, name: str, arg: nodes.Node, lineno: int) -> nodes.Call:
        call = nodes.Call(nodes.Name(name, "load", lineno=lineno), [arg], [], None, None, lineno=lineno)
        call.set_environment(self.env)
        return call

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = self._call(_ITER, node.iter, node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return self._call(_SIZED, node, node.lineno)


class _LimitedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "+", "**", "%"})

    def __init__(self) -> None:
        import jinja2.ext
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[Jinja2ChatFormatter.IgnoreGenerationTags, jinja2.ext.loopcontrols],
        )
        self.filters["tojson"] = _tojson
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.globals.pop("lipsum", None)
        self.globals["range"] = _safe_range
        self.globals[_ITER] = _guarded_iter
        self.globals[_SIZED] = _sized

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        out = _GuardLoops(self).visit(tree)
        assert isinstance(out, nodes.Template)
        return out

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        b = _budget()
        b.tick()
        if operator == "*":
            seq, n = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(n, int) and isinstance(seq, (str, list, tuple)):
                b.fits(len(seq) * max(n, 0), "repetition")
            elif (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() + right.bit_length() > MAX_INT_BITS
            ):
                raise TemplateLimitError(f"an integer of more than {MAX_INT_BITS} bits")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if right > 0 and max(left.bit_length() - 1, 1) * right > MAX_INT_BITS:
                raise TemplateLimitError(f"an integer power of more than {MAX_INT_BITS} bits")
        elif operator == "%" and isinstance(left, str):
            _check_format(left)
            _check_args(right if isinstance(right, tuple) else (right,))
        elif operator == "+":
            b.fits(_size(left) + _size(right), "concatenation")
        return b.account(super().call_binop(context, operator, left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        b = _budget()
        b.tick()
        if __obj is _guarded_iter or __obj is _sized:
            return __obj(*args)
        if __obj is not _safe_range:
            _precheck(b, __obj, args, kwargs)
        return b.account(super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        _budget().tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _budget().tick()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        _check_format(getattr(value, "__self__", None))
        return super().wrap_str_format(value)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """Transformers' (and llama-cpp-python's) ``tojson``: non-ASCII kept, no HTML escaping."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


_ENV_LOCK = threading.Lock()
_ENV: list[_LimitedEnvironment] = []


def _environment() -> _LimitedEnvironment:
    with _ENV_LOCK:
        if not _ENV:
            _ENV.append(_LimitedEnvironment())
        return _ENV[0]


@functools.lru_cache(maxsize=16)
def compile_template(source: str) -> Any:
    """The compiled template (cached). Raises :class:`TemplateLimitError` for a template
    longer than :data:`MAX_TEMPLATE_CHARS`, Jinja's ``TemplateSyntaxError`` for bad syntax."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateLimitError(
            f"the chat template has {len(source)} characters, above the limit of {MAX_TEMPLATE_CHARS}"
        )
    return _environment().from_string(source)


def _raise_exception(message: str) -> None:
    raise ValueError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def render_template(
    source: str,
    variables: Mapping[str, Any],
    *,
    input_chars: int,
    timeout: float = RENDER_TIMEOUT_S,
) -> str:
    """Render ``source`` with ``variables`` (besides ``raise_exception``, ``strftime_now``
    and ``add_generation_prompt=True``) under the limits, sized for ``input_chars``.

    Raises:
        TemplateLimitError: over a limit.
        Exception: whatever the template raises (``raise_exception`` gives ValueError).
    """
    template = compile_template(source)
    budget = _Budget(input_chars, timeout)
    context = {
        "raise_exception": _raise_exception,
        "add_generation_prompt": True,
        "functions": None,
        "function_call": None,
        "tools": None,
        "tool_choice": None,
        "strftime_now": _strftime_now,
        **variables,
    }
    previous = getattr(_state, "budget", None)
    _state.budget = budget
    try:
        parts: list[str] = []
        total = 0
        for part in template.generate(context):
            total += len(part)
            budget.fits(total, "the rendered prompt")
            budget.tick()
            parts.append(part)
        return "".join(parts)
    finally:
        _state.budget = previous
