"""The ``mtpstream`` command.

``mtpstream demo`` streams an MTP generation from a synthetic model (or
``--model PATH``) and compares it with plain decoding; ``mtpstream bench``
measures MTP against plain decoding (see ``mtpstream bench --help``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import anyio

from . import __version__
from .events import DoneEvent, EogEvent, TokenEvent
from .model import Model, load_model
from .session import init


def _progress_bar(label: str) -> tuple[object, object]:
    state = {"shown": -1}

    def progress(p: float) -> bool:
        pct = int(p * 100)
        if pct != state["shown"]:
            state["shown"] = pct
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\r{label} [{bar:<25}] {pct:3d}%")
            sys.stderr.flush()
        return True

    def done() -> None:
        sys.stderr.write("\n")

    return progress, done


def _load(path: str) -> Model:
    progress, done = _progress_bar("loading")
    model = load_model(path, progress=progress)  # type: ignore[arg-type]
    done()  # type: ignore[operator]
    return model


def _print_model(model: Model) -> None:
    print(f"model        {model.path}")
    print(f"arch         {model.arch}  ({model.description})")
    print(f"params       {model.n_params:,}  ({model.size_bytes / 2**20:.1f} MiB of tensors)")
    print(
        f"shape        n_embd={model.n_embd} n_layer={model.n_layer} "
        f"n_layer_nextn={model.n_layer_nextn} n_vocab={model.n_vocab} n_ctx_train={model.n_ctx_train}"
    )
    print(f"mtp head     {'yes' if model.has_mtp else 'no'}")


async def _demo(model: Model, prompt: str, n_draft: int, max_tokens: int) -> int:
    tokens = model.tokenize(prompt)
    with init(model, n_draft=0, n_ctx=1024) as plain:
        t0 = time.perf_counter()
        plain_ids = [
            ev.token_id
            async for ev in plain.stream_events(tokens, max_tokens=max_tokens)
            if isinstance(ev, TokenEvent)
        ]
        plain_s = time.perf_counter() - t0
    print(f"\nprompt       {prompt!r}")
    print(f"--- MTP stream (n_draft={n_draft}) ---")
    ids: list[int] = []
    with init(model, n_draft=n_draft, n_ctx=1024) as mtp:
        t0 = time.perf_counter()
        async for ev in mtp.stream_events(tokens, max_tokens=max_tokens):
            if isinstance(ev, TokenEvent):
                ids.append(ev.token_id)
                print(ev.text, end="", flush=True)
            elif isinstance(ev, (DoneEvent, EogEvent)):
                print(ev.text)
                print(f"--- finished: {type(ev).__name__}, usage {ev.usage} ---")
        mtp_s = time.perf_counter() - t0
        mtp.print_stats(file=sys.stdout)
    same = ids == plain_ids
    print(f"\nplain decoding: {len(plain_ids)} tokens in {plain_s * 1000:.1f} ms")
    print(f"MTP decoding:   {len(ids)} tokens in {mtp_s * 1000:.1f} ms ({plain_s / mtp_s:.2f}x)")
    print(f"identical to plain greedy decoding: {'yes' if same else 'NO'}")
    if model.n_embd < 512:
        print(
            "note: on a model this small an MTP draft step costs about as much as a target step, so MTP "
            "cannot be faster; try `mtpstream demo --size bench --mtp-error-rate 0 --n-draft 6`"
        )
    return 0 if same else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.model:
        path = args.model
    else:
        from .testing import make_model

        t0 = time.perf_counter()
        path = str(
            make_model(
                arch=args.arch,
                weights="oracle",
                size=args.size,
                mtp_error_rate=args.mtp_error_rate,
                head="hidden",  # drafts from the hidden row, as real heads do
            )
        )
        print(f"synthetic model written/cached in {time.perf_counter() - t0:.2f} s")
    model = _load(path)
    _print_model(model)
    prompt = args.prompt
    return anyio.run(_demo, model, prompt, args.n_draft, args.max_tokens)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mtpstream`` console script."""
    parser = argparse.ArgumentParser(prog="mtpstream", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mtpstream {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="stream an MTP generation from a synthetic (or given) model")
    demo.add_argument("--model", help="a GGUF with an MTP head (default: a synthetic qwen35 model)")
    demo.add_argument("--arch", default="qwen35", choices=["qwen35", "qwen35moe"])
    demo.add_argument(
        "--size",
        default="tiny",
        choices=["tiny", "small", "bench"],
        help="synthetic model size (bench: 0.6B, 660 MB)",
    )
    demo.add_argument("--mtp-error-rate", type=float, default=0.25)
    demo.add_argument("--n-draft", type=int, default=3)
    demo.add_argument("--max-tokens", type=int, default=64)
    demo.add_argument("--prompt", default="The quiet river carried")
    demo.set_defaults(func=_cmd_demo)
    bench = sub.add_parser(
        "bench", help="benchmark MTP against plain decoding (see `mtpstream bench --help`)", add_help=False
    )
    bench.set_defaults(func=None)
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from . import bench as bench_module

        return bench_module.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
