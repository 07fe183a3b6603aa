"""``mtpstream bench --chat``: a multi-turn conversation, warm against cold.

The conversation grows in turns: each turn's prompt is the whole history (every
earlier prompt and answer) plus ``turn_tokens`` new tokens, and the answer is
``turn_tokens`` tokens long. Two sessions run it side by side, turn by turn: one with
the prompt cache (``warm``: the turn reads only its new tokens) and one without
(``cold``: ``prompt_cache=False``, every turn reads the whole history). Per turn: the
time to first token of each (through ``stream_events``), the prompt length and how
many of its tokens were reused. At the end, two prompts that diverge inside the
cached tokens, each a few times: the last turn asked again (``regenerate``) and the
last answer replaced by other text before a new message (``edit_reply``); the warm
session restarts them from the checkpoint its last prompt left.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from .. import MTP, DoneEvent, EogEvent, Model, TokenEvent, init, load_model
from .measure import Level, Settings

_log = logging.getLogger(__name__)

_FILLER = (
    "the river ran past the old mill and the road went on over the hill where the town "
    "kept its market every week and the people came from far away to trade and talk "
)


async def _turn(mtp: MTP, prompt: list[int], tokens: int) -> tuple[float, list[int], int]:
    t0 = time.perf_counter()
    ttft = 0.0
    ids: list[int] = []
    cached = 0
    async for ev in mtp.stream_events(prompt, max_tokens=tokens):
        if isinstance(ev, TokenEvent):
            if not ids:
                ttft = time.perf_counter() - t0
            ids.append(ev.token_id)
        elif isinstance(ev, (DoneEvent, EogEvent)):
            cached = ev.usage.cached_tokens
            if not ids:
                ttft = time.perf_counter() - t0
    return ttft, ids, cached


@dataclass(frozen=True)
class ChatTurn:
    """One turn, warm and cold (the JSON's ``turns`` rows, field for field)."""

    turn: int
    prompt_tokens: int
    cached_tokens: int
    ttft_warm_ms: float
    ttft_cold_ms: float
    cold_over_warm: float | None
    same_answer: bool


@dataclass(frozen=True)
class ChatResult:
    """The conversation, its divergent prompts and the warm session's checkpoints."""

    level: str
    n_draft: int
    turn_tokens: int
    history_tokens: int
    turns: list[ChatTurn]
    divergent: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """The ``chat`` section."""
        turns = [dataclasses.asdict(t) for t in self.turns]
        return {
            "level": self.level,
            "n_draft": self.n_draft,
            "turn_tokens": self.turn_tokens,
            "history_tokens": self.history_tokens,
            "turns": turns,
            "at_1500": _near(turns, 1500),
            "divergent": self.divergent,
        }


def _one_turn(
    warm: MTP, cold: MTP, turn: int, prompt: list[int], turn_tokens: int
) -> tuple[ChatTurn, list[int]]:
    """Both sessions on one turn's prompt (which goes first alternates); the row and
    the warm session's answer."""
    order = (warm, cold) if turn % 2 == 0 else (cold, warm)
    out: dict[int, tuple[float, list[int], int]] = {}
    for mtp in order:
        out[id(mtp)] = anyio.run(_turn, mtp, prompt, turn_tokens, backend="asyncio")
    w, c = out[id(warm)], out[id(cold)]
    if w[1] != c[1]:
        _log.info(f"    turn {turn}: warm and cold answers differ (float near-tie?)")
    row = ChatTurn(
        turn=turn,
        prompt_tokens=len(prompt),
        cached_tokens=w[2],
        ttft_warm_ms=round(w[0] * 1000, 2),
        ttft_cold_ms=round(c[0] * 1000, 2),
        cold_over_warm=round(c[0] / w[0], 2) if w[0] > 0 else None,
        same_answer=w[1] == c[1],
    )
    if turn % 5 == 0:
        _log.info(
            f"    turn {turn}: {row.prompt_tokens} prompt tokens ({row.cached_tokens} cached), "
            f"TTFT warm {row.ttft_warm_ms} ms, cold {row.ttft_cold_ms} ms"
        )
    return row, w[1]


def run(level: Level, settings: Settings, history_tokens: int, turn_tokens: int, k: int) -> ChatResult:
    """One conversation up to ``history_tokens``, warm and cold turn by turn."""
    model: Model = load_model(level.path)
    rows: list[ChatTurn] = []
    try:
        filler = model.tokenize(_FILLER * 4, add_special=False)
        n_ctx = history_tokens + 4 * turn_tokens + 64
        opts = {"n_draft": k, "n_ctx": n_ctx, "n_threads": settings.threads}
        with init(model, **opts) as warm, init(model, prompt_cache=False, **opts) as cold:  # type: ignore[arg-type]
            history: list[int] = model.tokenize("A conversation.", add_special=True)
            turn = 0
            while len(history) + turn_tokens <= history_tokens:
                start = (turn * turn_tokens) % (len(filler) - turn_tokens)
                prompt = [*history, *filler[start : start + turn_tokens]]
                row, answer = _one_turn(warm, cold, turn, prompt, turn_tokens)
                rows.append(row)
                history = [*prompt, *answer]
                last_prompt = prompt
                turn += 1
            divergent = _divergent(warm, cold, last_prompt, filler, turn_tokens) if rows else {}
    finally:
        model.close()
    return ChatResult(level.name, k, turn_tokens, history_tokens, rows, divergent)


def _divergent(
    warm: MTP, cold: MTP, last_prompt: list[int], filler: list[int], turn_tokens: int, reps: int = 3
) -> dict[str, Any]:
    """Median TTFT, warm and cold, of prompts that diverge inside the warm cache."""
    out: dict[str, Any] = {}
    for name in ("regenerate", "edit_reply"):
        warm_ms: list[float] = []
        cold_ms: list[float] = []
        cached: list[int] = []
        for rep in range(reps):
            if name == "regenerate":
                prompt = last_prompt
            else:
                at = (rep * 7 + 3) % (len(filler) - 2 * turn_tokens)
                prompt = [*last_prompt, *filler[at : at + 2 * turn_tokens]]
            for mtp in (warm, cold) if rep % 2 == 0 else (cold, warm):
                ttft, _, n = anyio.run(_turn, mtp, prompt, turn_tokens, backend="asyncio")
                (warm_ms if mtp is warm else cold_ms).append(ttft * 1000)
                if mtp is warm:
                    cached.append(n)
        w, c = statistics.median(warm_ms), statistics.median(cold_ms)
        out[name] = {
            "prompt_tokens": len(prompt),
            "cached_tokens": cached,
            "ttft_warm_ms": round(w, 2),
            "ttft_cold_ms": round(c, 2),
            "cold_over_warm": round(c / w, 2) if w > 0 else None,
        }
    st = warm.stats()
    out["checkpoints"] = st.checkpoints
    out["checkpoint_bytes"] = st.checkpoint_bytes
    return out


def _near(rows: Sequence[dict[str, Any]], n: int) -> dict[str, Any] | None:
    """The turns whose prompt is within 100 tokens of n: median TTFTs and ratio."""
    close = [r for r in rows if abs(r["prompt_tokens"] - n) <= 100]
    if not close:
        return None
    warm = statistics.median(r["ttft_warm_ms"] for r in close)
    cold = statistics.median(r["ttft_cold_ms"] for r in close)
    return {
        "turns": [r["turn"] for r in close],
        "ttft_warm_ms": warm,
        "ttft_cold_ms": cold,
        "cold_over_warm": round(cold / warm, 2),
    }
