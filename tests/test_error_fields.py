"""``InvalidOptionError.field`` survives from native code (``NativeError(ErrorCode,
message, field)``) to the caller of ``init()``, of ``generate()`` and to the server's
400 body. Python checks every option before native code sees it, so these tests
switch the Python check off (or hand native code a value it refuses) to reach the
native check itself."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import mtpstream
from mtpstream import _bridge
from mtpstream.server import create_app

PROMPT = "the river runs"
KEY = "sk-fields"


def _native_refuses_max_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls reach native code with ``max_tokens=0`` (which it refuses, naming it)."""
    convert = _bridge.generation_options

    def zero_max_tokens(*args: Any, **kwargs: Any) -> Any:
        options = convert(*args, **kwargs)
        options.max_tokens = 0
        return options

    monkeypatch.setattr(_bridge, "generation_options", zero_max_tokens)


def test_error_codes_cover_every_native_code() -> None:
    codes = {c for c in _bridge.ErrorCode if c is not _bridge.ErrorCode.ok}
    assert codes == set(_bridge._ERRORS)


def test_init_keeps_the_field_of_a_native_error(
    oracle: mtpstream.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_bridge, "check_batch", lambda opts, n_draft: None)
    with pytest.raises(mtpstream.InvalidOptionError) as info:
        # native Engine::create: n_batch below n_seq * (n_draft + 1)
        mtpstream.init(oracle, n_draft=3, n_seq=4, n_batch=8)
    assert info.value.field == "n_batch"
    assert "n_batch" in str(info.value)


@pytest.mark.asyncio
async def test_generate_keeps_the_field_of_a_native_error(
    oracle: mtpstream.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    with mtpstream.init(oracle, n_draft=3, n_ctx=256) as mtp:
        _native_refuses_max_tokens(monkeypatch)
        with pytest.raises(mtpstream.InvalidOptionError) as info:
            await mtp.generate(PROMPT, max_tokens=4)
        assert info.value.field == "max_tokens"
        monkeypatch.undo()
        assert await mtp.generate(PROMPT, max_tokens=2)


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_the_servers_400_names_the_field_of_a_native_error(
    oracle: mtpstream.Model, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    body: dict[str, Any] = {"max_tokens": 4}
    if path == "/v1/completions":
        body["prompt"] = PROMPT
    else:
        body["messages"] = [{"role": "user", "content": PROMPT}]
    with mtpstream.init(oracle, n_draft=3, n_ctx=256) as mtp:
        app = create_app(mtp, api_key=KEY)
        _native_refuses_max_tokens(monkeypatch)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            headers = {"Authorization": f"Bearer {KEY}"}
            for stream in (False, True):
                r = await client.post(path, json={**body, "stream": stream}, headers=headers, timeout=60)
                assert r.status_code == 400, r.text
                err = r.json()["error"]
                assert err["param"] == "max_tokens" and err["type"] == "invalid_request_error"
