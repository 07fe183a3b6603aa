"""``POST /v1/responses``: OpenAI's Responses API on the server's one generation call.

The body becomes a Chat Completions body (:mod:`._responses_request`, off the event
loop), runs as a chat call (:func:`~mtpstream._server_state.chat_chunks`), and its
chunks are shown as a ``response`` object or the Responses events
(:mod:`._responses_output`). Stateless: ``GET``/``DELETE /v1/responses/{id}`` (and its
``input_items``, ``cancel``) answer 404 saying that nothing is stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ._chunk_streams import PreparingChatStream
from ._openai import ChatBody
from ._responses_output import ResponseEvents, Shape, response_of
from ._responses_request import ResponsesBody, chat_body, renamed
from ._server_calls import Framing
from ._server_http import HTTPError, require_key
from ._server_state import COUNTED_ENDPOINTS, Chunks, Result, ServerState, chat_chunks, generation
from .completions import ChatCompletion, ChatCompletionChunk
from .errors import ContextOverflowError, InvalidOptionError

__all__ = ["router"]

RESPONSES = "/v1/responses"
COUNTED_ENDPOINTS.add(RESPONSES)


class _ResponsesChunks(PreparingChatStream):
    """A chat call's chunks whose errors name the Responses fields (``input`` rather
    than ``messages``...); the call's own errors surface at the first chunk."""

    def __init__(self, inner: PreparingChatStream) -> None:
        super().__init__(_unused)
        self._wrapped = inner
        self._first = True

    async def __anext__(self) -> ChatCompletionChunk:
        try:
            chunk = await self._wrapped.__anext__()
        except InvalidOptionError as exc:
            raise renamed(exc) from None
        except ContextOverflowError as exc:
            if not self._first:
                raise
            raise HTTPError(
                400, str(exc), "invalid_request_error", "input", "context_length_exceeded"
            ) from None
        self._first = False
        return chunk

    async def aclose(self) -> None:
        await self._wrapped.aclose()


def _unused() -> Any:  # pragma: no cover - _ResponsesChunks reads its wrapped stream
    raise AssertionError("not prepared here")


def _chunks(state: ServerState, body: ResponsesBody) -> PreparingChatStream:
    """The chat call of a Responses body (in a worker thread: the translation walks the
    whole input)."""
    chat = chat_body(body.options)  # its errors name the Responses fields already
    try:
        return _ResponsesChunks(chat_chunks(state, ChatBody.of(chat)))
    except InvalidOptionError as exc:
        raise renamed(exc) from None


def _token_counter(state: ServerState) -> Any:
    model = state.mtp.model

    def count(text: str) -> int:
        return len(model.tokenize(text, add_special=False, parse_special=False))

    return count


class _ResponsesPresenter:
    """The Responses API's view of a chat call."""

    def stream(self, state: ServerState, body: Any, chunks: Chunks) -> AsyncIterator[Any]:
        return chunks

    def framing(self, state: ServerState, body: Any) -> Framing:
        return ResponseEvents(self._shape(state, body), _token_counter(state))

    def whole(self, state: ServerState, body: Any, result: Result) -> dict[str, Any]:
        assert isinstance(result, ChatCompletion)
        return response_of(self._shape(state, body), result, _token_counter(state))

    @staticmethod
    def _shape(state: ServerState, body: ResponsesBody) -> Shape:
        return Shape(body.options, state.alias, state.limits.report_cached_tokens)


RESPONSES_PRESENTER = _ResponsesPresenter()
router = APIRouter()
_key = [Depends(require_key)]


@router.post(RESPONSES, dependencies=_key)
async def create_response(request: Request) -> Response:
    return await generation(request, RESPONSES, ResponsesBody.of, _chunks, RESPONSES_PRESENTER)


def _not_stored(response_id: str) -> Response:
    message = (
        f"No response found with id '{response_id[:80]}': this server is stateless and stores no "
        'responses (every response says "store": false)'
    )
    return HTTPError(404, message, "invalid_request_error", "response_id", "not_found").response()


@router.api_route(RESPONSES + "/{response_id}", methods=["GET", "DELETE"], dependencies=_key)
async def stored_response(response_id: str) -> Response:
    return _not_stored(response_id)


@router.get(RESPONSES + "/{response_id}/input_items", dependencies=_key)
async def stored_input_items(response_id: str) -> Response:
    return _not_stored(response_id)


@router.post(RESPONSES + "/{response_id}/cancel", dependencies=_key)
async def cancel_response(response_id: str) -> Response:
    return _not_stored(response_id)
