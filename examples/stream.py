"""Stream an MTP generation and watch the counters from another task.

    python examples/stream.py [MODEL.gguf]

Without an argument it uses a synthetic qwen35 model from mtpstream.testing.
"""

from __future__ import annotations

import sys

import anyio

import mtpstream


async def main(path: str) -> None:
    model = mtpstream.load_model(path)
    with mtpstream.init(model, n_draft=3, n_ctx=4096) as mtp:

        async def watch() -> None:
            while True:
                await anyio.sleep(0.05)
                s = mtp.stats()
                line = f"[stats] {s.tokens_emitted} tokens, acceptance {s.acceptance_rate:.2f}"
                print(line, file=sys.stderr)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            async for piece in mtp.stream("Write a haiku about the sea:", max_tokens=200):
                print(piece, end="", flush=True)
            tg.cancel_scope.cancel()
        print()
        mtp.print_stats()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        model_path = sys.argv[1]
    else:
        from mtpstream.testing import make_model

        model_path = str(make_model(arch="qwen35", weights="oracle", size="tiny"))
    anyio.run(main, model_path)
