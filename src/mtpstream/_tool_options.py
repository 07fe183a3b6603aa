"""The tool options of a chat call (``tools``, ``tool_choice``,
``parallel_tool_calls``), checked once."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._grammar_limits import check_schema
from .errors import InvalidOptionError

__all__ = ["ToolOptions", "tool_options"]

_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
MAX_TOOLS = 128
Mode = Literal["auto", "none", "required", "named"]


@dataclass(frozen=True)
class ToolOptions:
    """``tools`` as the template sees them, each one's parameters schema by name, and
    what ``tool_choice``/``parallel_tool_calls`` ask."""

    tools: list[dict[str, Any]]
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    mode: Mode = "auto"
    name: str | None = None  # the function a named tool_choice forces
    parallel: bool = True

    @property
    def forced(self) -> list[tuple[str, dict[str, Any]]]:
        """The tools a forced call may pick (none unless ``required`` or named)."""
        if self.mode == "required":
            return list(self.schemas.items())
        if self.mode == "named" and self.name is not None:
            return [(self.name, self.schemas[self.name])]
        return []


def _fail(field_: str, message: str) -> InvalidOptionError:
    return InvalidOptionError(f"invalid option '{field_}': {message}", field=field_)


def _tool(i: int, tool: Any) -> tuple[str, dict[str, Any], dict[str, Any]]:
    if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
        raise _fail("tools", f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}")
    fn = tool.get("function")
    if not isinstance(fn, Mapping):
        raise _fail("tools", f"tools[{i}] has no 'function' object")
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(
            "tools", f"tools[{i}].function.name must be 1-64 of a-z, A-Z, 0-9, _ . : - (got {name!r})"
        )
    desc = fn.get("description")
    if desc is not None and not isinstance(desc, str):
        raise _fail("tools", f"tools[{i}].function.description must be a string")
    params = fn.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    if not isinstance(params, Mapping) or params.get("type", "object") != "object":
        raise _fail("tools", f"tools[{i}].function.parameters must be a JSON schema of type 'object'")
    check_schema(params, "tools")
    function = {k: v for k, v in fn.items() if k != "parameters"} | {"parameters": dict(params)}
    return name, {"type": "function", "function": function}, dict(params)


def _choice(choice: Any, schemas: Mapping[str, Any]) -> tuple[Mode, str | None]:
    if choice is None:
        return ("auto" if schemas else "none"), None
    if choice in ("auto", "none", "required"):
        if choice == "required" and not schemas:
            raise _fail("tool_choice", "'required' needs tools")
        mode: Mode = choice
        return mode, None
    fn = choice.get("function") if isinstance(choice, Mapping) else None
    name = fn.get("name") if isinstance(fn, Mapping) else None
    if not isinstance(name, str) or choice.get("type", "function") != "function":
        raise _fail(
            "tool_choice",
            "must be 'auto', 'none', 'required' or {'type': 'function', 'function': {'name': ...}} "
            f"(got {choice!r:.100})",
        )
    if name not in schemas:
        raise _fail("tool_choice", f"names the function {name!r}, which is not in tools")
    return "named", name


def tool_options(tools: Any, tool_choice: Any, parallel_tool_calls: Any) -> ToolOptions | None:
    """The checked tool options; None when the call has no tools and no tool choice.

    Raises:
        InvalidOptionError: ``tools`` not a list of function tools with unique names and
            object schemas within :mod:`._grammar_limits`' limits; ``tool_choice`` not
            ``auto``/``none``/``required``/a function in ``tools``;
            ``parallel_tool_calls`` not a bool (``.field`` names the option).
    """
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise _fail("parallel_tool_calls", f"must be true or false (got {parallel_tool_calls!r:.50})")
    if tools is None and tool_choice in (None, "none", "auto"):
        return None
    if tools is None:
        tools = []
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise _fail("tools", "must be a list of {'type': 'function', 'function': {...}}")
    if len(tools) > MAX_TOOLS:
        raise _fail("tools", f"{len(tools)} tools; the limit is {MAX_TOOLS}")
    rendered: list[dict[str, Any]] = []
    schemas: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        name, spec, params = _tool(i, tool)
        if name in schemas:
            raise _fail("tools", f"two tools are named {name!r}")
        rendered.append(spec)
        schemas[name] = params
    mode, forced = _choice(tool_choice, schemas)
    return ToolOptions(rendered, schemas, mode, forced, parallel_tool_calls is not False)
