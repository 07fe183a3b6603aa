"""llama-server's utility endpoints, shaped as its are where they mean the same:
``POST /tokenize``, ``POST /detokenize``, ``POST /apply-template``, ``GET /props`` and
``GET /slots``. All are behind the API key; bodies are read within the server's limits,
token ids are checked against the vocabulary (400 naming the field) and tokenizing,
detokenizing and templating run off the event loop (needs the server extra)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import metadata
from typing import Any, TypeVar

import anyio
from fastapi import APIRouter, Depends, Request

from ._reasoning import with_defaults
from ._server_http import HTTPError, read_json, require_key
from ._server_state import ServerState, state_of
from .options import check_text

__all__ = ["router"]

T = TypeVar("T")
router = APIRouter()
_key = [Depends(require_key)]
# the chat options that reach the template (what /apply-template takes besides messages)
_TEMPLATE_OPTIONS = ("tools", "tool_choice", "chat_template_kwargs", "reasoning_effort")


async def _off_loop(state: ServerState, fn: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(fn, limiter=state.limiter())


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise HTTPError(400, f"'{name}' must be true or false", param=name)
    return value


def _piece(raw: bytes) -> str | list[int]:
    """A token's piece as llama-server shows it: text if valid UTF-8, else its bytes."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)


@router.post("/tokenize", dependencies=_key)
async def tokenize(request: Request) -> Any:
    """``{content, add_special=false, parse_special=true, with_pieces=false}`` ->
    ``{tokens}``: ids, or ``{id, piece}`` objects with ``with_pieces``."""
    state = state_of(request)
    body = await read_json(request, state.limits)
    content = body.get("content")
    if not isinstance(content, str):
        raise HTTPError(400, "'content' must be a string", param="content")
    try:
        check_text(content, "content")
    except ValueError as exc:
        raise HTTPError(400, str(exc), param="content") from None
    add_special, parse_special = _flag(body, "add_special", False), _flag(body, "parse_special", True)
    with_pieces = _flag(body, "with_pieces", False)
    model = state.mtp.model

    def run() -> list[Any]:
        ids = model.tokenize(content, add_special, parse_special)
        if not with_pieces:
            return list(ids)
        return [{"id": t, "piece": _piece(model.token_to_piece(t, special=True))} for t in ids]

    return {"tokens": await _off_loop(state, run)}


@router.post("/detokenize", dependencies=_key)
async def detokenize(request: Request) -> Any:
    """``{tokens}`` -> ``{content}`` (``Model.detokenize``)."""
    state = state_of(request)
    body = await read_json(request, state.limits)
    tokens = body.get("tokens", [])
    model = state.mtp.model
    n_vocab = model.n_vocab
    if not isinstance(tokens, list):
        raise HTTPError(400, "'tokens' must be a list of token ids", param="tokens")
    for i, t in enumerate(tokens):
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n_vocab:
            message = f"tokens[{i}] is not a token id of this model's vocabulary (0..{n_vocab - 1}): {t!r}"
            raise HTTPError(400, message[:300], param="tokens")
    return {"content": await _off_loop(state, functools.partial(model.detokenize, tokens))}


@router.post("/apply-template", dependencies=_key)
async def apply_template(request: Request) -> Any:
    """``{messages, tools?, tool_choice?, chat_template_kwargs?, reasoning_effort?,
    chat_template?}`` -> ``{prompt}``: the text a chat completion with these would
    generate from (the server's chat defaults under the request's)."""
    state = state_of(request)
    body = await read_json(request, state.limits)
    if "messages" not in body:
        raise HTTPError(400, "'messages' is required", param="messages")
    options = with_defaults(state.chat_defaults, {k: body[k] for k in _TEMPLATE_OPTIONS if k in body})
    options.pop("reasoning_format", None)
    render = functools.partial(state.mtp.render_chat, body["messages"], body.get("chat_template"), **options)
    return {"prompt": await _off_loop(state, render)}


@router.get("/props", dependencies=_key)
async def props(request: Request) -> Any:
    """The model, the session and the runtime options it was started with."""
    state = state_of(request)
    mtp, model = state.mtp, state.mtp.model
    runtime = {
        "n_gpu_layers": model.n_gpu_layers,
        "n_cpu_moe": model.n_cpu_moe,
        "mmap": model.uses_mmap,
        "repack": model.repack,
        **mtp.context_options,
    }
    return {
        "default_generation_settings": {
            "n_ctx": mtp.n_ctx,
            "speculative": mtp.n_draft > 0,
            "params": {"speculative.n_max": mtp.n_draft},
        },
        "total_slots": mtp.n_seq,
        "model_path": str(model.path),
        "model_alias": state.alias,
        "chat_template": model.chat_template or "",
        "modalities": {"vision": False},
        "build_info": _build_info(),
        "is_sleeping": False,
        "n_ctx": mtp.n_ctx,
        "n_seq": mtp.n_seq,
        "n_draft": "auto" if mtp.auto_draft else mtp.n_draft,
        "rollback": mtp.rollback,
        "runtime": runtime,
    }


@router.get("/slots", dependencies=_key)
async def slots(request: Request) -> Any:
    """One object per sequence: busy or idle, its tokens, what the prompt cache keeps
    of it (no prompt text). ``?fail_on_no_slot=1``: 503 when every sequence is busy."""
    state = state_of(request)
    mtp = state.mtp
    views = mtp.sequences()
    if request.query_params.get("fail_on_no_slot") in ("1", "true") and all(v.busy for v in views):
        raise HTTPError(503, "no slot available", code="unavailable")
    speculative = mtp.n_draft > 0
    return [
        {
            "id": v.id,
            "n_ctx": mtp.n_ctx,
            "speculative": speculative,
            "is_processing": v.busy,
            "n_prompt_tokens": v.n_prompt,
            "n_cached_tokens": v.n_cached,
            "n_past": v.n_past,
            "next_token": {"has_next_token": v.busy, "n_decoded": v.n_decoded},
            "prompt_cache": {
                "tokens": v.cache_tokens,
                "extendable": v.cache_extendable,
                "checkpoints": v.cache_checkpoints,
            },
        }
        for v in views
    ]


@functools.cache
def _build_info() -> str:
    from . import __version__

    try:
        llama = metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:  # pragma: no cover - always installed
        llama = "unknown"
    return f"mtpstream {__version__} (llama-cpp-python {llama})"
