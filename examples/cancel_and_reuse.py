"""Leave a stream early, then reuse the session: the next call starts clean.

python examples/cancel_and_reuse.py
"""

from __future__ import annotations

import anyio

import mtpstream
from mtpstream.testing import make_model


async def main() -> None:
    model = mtpstream.load_model(make_model(arch="qwen35", weights="oracle", size="tiny"))
    with mtpstream.init(model, n_draft=3) as mtp:
        async for piece in mtp.stream("the river", max_tokens=500):
            print(piece, end="")
            break  # cancels the native loop; the session waits for its acknowledgement
        print(" ... (cancelled)")
        with anyio.move_on_after(0.01):  # a deadline cancels too
            await mtp.generate("the river", max_tokens=5000)
        print(await mtp.generate("the river", max_tokens=20))


if __name__ == "__main__":
    anyio.run(main)
