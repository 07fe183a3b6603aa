"""The ``mtpstream`` command.

  mtpstream generate MODEL PROMPT   stream a completion to stdout (stats to stderr)
  mtpstream chat MODEL              interactive chat through the model's template
  mtpstream serve MODEL             OpenAI-compatible HTTP server (the server extra)
  mtpstream info MODEL              arch, size, MTP head, template, context length
                                    (--rpc: which device holds which layers)
  mtpstream rpc-server              an RPC worker (llama.cpp's RPC backend) from this install
  mtpstream make-model              write a synthetic test model, print its path
  mtpstream demo                    MTP on a synthetic model, against plain decoding
  mtpstream bench                   benchmarks (see `mtpstream bench --help`)

Errors are one line on stderr with exit code 1 (runtime) or 2 (usage); --debug
shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio

from . import __version__
from ._chat_history import add_history_args, history_path, line_editing
from ._cli_common import UsageError as _UsageError
from ._cli_common import add_repack_arg as _add_repack_arg
from ._cli_common import add_session_args as _add_session_args
from ._cli_common import load as _load
from ._cli_common import session as _session
from ._cli_rpc import (
    RPC_SERVER_DESCRIPTION,
    RPC_SERVER_HELP,
    add_rpc_args,
    add_rpc_server_args,
    capture_placement,
    placement_fields,
    rpc_load_options,
)
from ._cli_serve import add_serve_args, gpu_layers
from ._console import Field, print_fields
from .errors import InvalidOptionError, MTPError
from .events import DoneEvent, EogEvent, TokenEvent
from .model import Model, cpu_offers_amx_buffer
from .session import MTP, init


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"max_tokens": args.max_tokens, "temp": args.temp}
    if args.seed is not None:
        out["seed"] = args.seed
    return out


# ------------------------------------------------------------------ info / make-model
def _model_fields(model: Model) -> list[Field]:
    head = "yes" if model.has_mtp else "no"
    if model.n_layer_nextn:
        head += f" ({model.n_layer_nextn} NextN layer{'s' if model.n_layer_nextn > 1 else ''})"
    tmpl = model.chat_template
    amx = " (this CPU offers llama.cpp's AMX buffer: off by default)" if cpu_offers_amx_buffer() else ""
    return [
        ("model", str(model.path)),
        ("arch", f"{model.arch}  ({model.description})"),
        ("params", f"{model.n_params:,}  ({model.size_bytes / 2**20:.1f} MiB of tensors)"),
        ("shape", f"n_embd={model.n_embd} n_layer={model.n_layer} n_vocab={model.n_vocab}"),
        ("context", f"{model.n_ctx_train} tokens (trained)"),
        ("mtp head", head),
        ("sidecar", "yes (MTP head only: pass it as draft_model=)" if model.is_sidecar else "no"),
        ("chat template", f"yes ({len(tmpl)} characters)" if tmpl else "no"),
        ("repack", f"{'on' if model.repack else 'off'}{amx}"),
    ]


def _print_model(model: Model) -> None:
    print_fields(_model_fields(model), sys.stdout)


def _cmd_info(args: argparse.Namespace) -> int:
    options = rpc_load_options(args)
    if not options:
        with _load(args.model, quiet=True, n_gpu_layers=args.n_gpu_layers) as model:
            _print_model(model)
        return 0
    with capture_placement() as lines:
        model = _load(args.model, quiet=True, n_gpu_layers=args.n_gpu_layers, **options)
    with model:
        fields = [
            *_model_fields(model),
            ("rpc", ", ".join(model.rpc)),
            *placement_fields(lines, model.rpc, model.native.rpc_relays),
        ]
        print_fields(fields, sys.stdout)
    return 0


def _cmd_make_model(args: argparse.Namespace) -> int:
    from .testing import make_model

    path = make_model(
        arch=args.arch,
        weights=args.weights,
        size=args.size,
        mtp_error_rate=args.mtp_error_rate,
        head=args.head or ("token" if args.weights == "soft" else "hidden"),
        kind=args.kind,
        seed=args.seed,
        cache_dir=args.cache_dir,
    )
    print(path)
    return 0


# ------------------------------------------------------------------ generate / chat
async def _generate(mtp: MTP, prompt: str, options: dict[str, Any]) -> None:
    events = mtp.stream_events(prompt, **options)
    async with contextlib.aclosing(events):
        async for ev in events:
            if isinstance(ev, TokenEvent):
                sys.stdout.write(ev.text)
                sys.stdout.flush()
            elif isinstance(ev, (DoneEvent, EogEvent)):
                sys.stdout.write(ev.text + "\n")
                u = ev.usage
                print(
                    f"[{u.prompt_tokens} prompt + {u.completion_tokens} generated tokens, "
                    f"acceptance {u.acceptance_rate:.3f}, {mtp.stats().tokens_per_sec:.1f} tok/s]",
                    file=sys.stderr,
                )


def _cmd_generate(args: argparse.Namespace) -> int:
    with _load(args.model, args.quiet, args.repack) as model, _session(model, args) as mtp:
        anyio.run(_generate, mtp, args.prompt, _sampling(args))
    return 0


async def _chat_loop(mtp: MTP, options: dict[str, Any], system: str | None) -> None:
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    print("chat: /reset clears the history, /exit (or Ctrl-D) leaves", flush=True)
    while True:
        try:
            line = await anyio.to_thread.run_sync(lambda: input("> "))
        except EOFError:
            print()
            return
        text = line.strip()
        if text == "/exit":
            return
        if text == "/reset":
            history = history[:1] if system else []
            print("(history cleared)", flush=True)
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        parts: list[str] = []
        async with mtp.stream_chat(history, **options) as chunks:
            async for chunk in chunks:
                delta = chunk.choices[0].delta.content or ""
                parts.append(delta)
                sys.stdout.write(delta)
                sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(parts)})


def _cmd_chat(args: argparse.Namespace) -> int:
    with _load(args.model, args.quiet, args.repack) as model, _session(model, args) as mtp:
        mtp.render_chat([{"role": "user", "content": "x"}])  # fail early without a template
        with line_editing(history_path(args), args.history_size):
            anyio.run(_chat_loop, mtp, _sampling(args), args.system)
    return 0


# ------------------------------------------------------------------ demo
async def _timed(mtp: MTP, tokens: list[int], max_tokens: int, echo: bool) -> tuple[list[int], float, Any]:
    ids: list[int] = []
    t0 = time.perf_counter()
    end: Any = None
    async for ev in mtp.stream_events(tokens, max_tokens=max_tokens):
        if isinstance(ev, TokenEvent):
            ids.append(ev.token_id)
            if echo:
                print(ev.text, end="", flush=True)
        elif isinstance(ev, (DoneEvent, EogEvent)):
            end = ev
            if echo:
                print(ev.text)
    return ids, time.perf_counter() - t0, end


async def _demo(model: Model, prompt: str, n_draft: int, max_tokens: int, rounds: int) -> int:
    tokens = model.tokenize(prompt)
    with init(model, n_draft=0, n_ctx=1024) as plain, init(model, n_draft=n_draft, n_ctx=1024) as mtp:
        print(f"\nprompt       {prompt!r}")
        print(f"--- MTP stream (n_draft={n_draft}) ---")
        ids, _, end = await _timed(mtp, tokens, max_tokens, echo=True)
        print(f"--- finished: {type(end).__name__}, usage {end.usage} ---")
        plain_ids, _, _ = await _timed(plain, tokens, max_tokens, echo=False)
        # paired, interleaved rounds (the order alternates), after the warm-up above
        ratios, plain_s, mtp_s = [], [], []
        for r in range(rounds):
            first, second = (plain, mtp) if r % 2 == 0 else (mtp, plain)
            a = (await _timed(first, tokens, max_tokens, echo=False))[1]
            b = (await _timed(second, tokens, max_tokens, echo=False))[1]
            p, m = (a, b) if first is plain else (b, a)
            plain_s.append(p)
            mtp_s.append(m)
            ratios.append(p / m)
        mtp.print_stats(file=sys.stdout)
    same = ids == plain_ids
    print(
        f"\nplain decoding (n_draft=0): {len(plain_ids)} tokens in {statistics.median(plain_s) * 1000:.1f} ms"
    )
    print(f"MTP (n_draft={n_draft}):          {len(ids)} tokens in {statistics.median(mtp_s) * 1000:.1f} ms")
    print(
        f"speed MTP / plain: {statistics.median(ratios):.2f}x (median of {rounds} paired, "
        f"interleaved rounds; range {min(ratios):.2f}-{max(ratios):.2f})"
    )
    print(f"identical to plain greedy decoding: {'yes' if same else 'NO'}")
    if model.n_embd < 512:
        print(
            "note: on a model this small an MTP draft step costs about as much as a target step, so MTP "
            "cannot be faster; the default `--size bench` shows the point"
        )
    return 0 if same else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.n_draft < 1:
        raise _UsageError("--n-draft must be >= 1 (the demo compares MTP with plain decoding)")
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
    with _load(path, repack=args.repack) as model:
        _print_model(model)
        return int(anyio.run(_demo, model, args.prompt, args.n_draft, args.max_tokens, args.rounds))


# ------------------------------------------------------------------ parser
def _add_info_args(info: argparse.ArgumentParser) -> None:
    info.add_argument("model", metavar="MODEL")
    info.add_argument(
        "-ngl", "--n-gpu-layers", dest="n_gpu_layers", type=gpu_layers, default=None, metavar="N",
        help="layers offloaded (to --rpc workers and local GPUs): a count, 'auto' or 'all'",
    )  # fmt: skip
    add_rpc_args(info)
    info.set_defaults(func=_cmd_info)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtpstream", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"mtpstream {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="stream a completion of PROMPT to stdout")
    _add_session_args(gen)
    gen.add_argument("prompt", metavar="PROMPT")
    gen.set_defaults(func=_cmd_generate)

    chat = sub.add_parser("chat", help="interactive chat through the model's chat template")
    _add_session_args(chat)
    chat.add_argument("--system", default=None, help="a system message")
    add_history_args(chat)
    chat.set_defaults(func=_cmd_chat)

    add_serve_args(sub.add_parser("serve", help="OpenAI-compatible HTTP server"))
    rpc_server = sub.add_parser("rpc-server", help=RPC_SERVER_HELP, description=RPC_SERVER_DESCRIPTION)
    add_rpc_server_args(rpc_server)

    _add_info_args(sub.add_parser("info", help="describe a GGUF model (--rpc: where its layers are)"))

    mk = sub.add_parser("make-model", help="write (or find in the cache) a synthetic model; print its path")
    mk.add_argument("--arch", choices=("qwen35", "qwen35moe"), default="qwen35")
    mk.add_argument("--weights", choices=("oracle", "random", "soft"), default="oracle")
    mk.add_argument("--size", choices=("tiny", "small", "bench"), default="tiny")
    mk.add_argument(
        "--head", choices=("hidden", "kv", "kv2", "token"), default=None, help="default: hidden (soft: token)"
    )
    mk.add_argument("--kind", choices=("mtp", "plain", "sidecar"), default="mtp")
    mk.add_argument("--mtp-error-rate", type=float, default=0.25)
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--cache-dir", default=None)
    mk.set_defaults(func=_cmd_make_model)

    demo = sub.add_parser("demo", help="MTP on a synthetic (or given) model, against plain decoding")
    demo.add_argument("--model", help="a GGUF with an MTP head (default: a synthetic qwen35 model)")
    demo.add_argument("--arch", default="qwen35", choices=["qwen35", "qwen35moe"])
    demo.add_argument(
        "--size",
        default="bench",
        choices=["tiny", "small", "bench"],
        help="synthetic model size (default bench: 0.6B parameters, 660 MB, written once into the "
        "cache in ~10 s; tiny and small are too small for MTP to be faster)",
    )
    demo.add_argument("--mtp-error-rate", type=float, default=0.25)
    demo.add_argument("--n-draft", type=int, default=3)
    demo.add_argument("--max-tokens", type=int, default=64)
    demo.add_argument("--rounds", type=int, default=5, help="paired timing rounds (default 5)")
    demo.add_argument("--prompt", default="The quiet river carried")
    _add_repack_arg(demo)
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser("bench", help="benchmarks (see `mtpstream bench --help`)", add_help=False)
    bench.set_defaults(func=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mtpstream`` console script; returns the exit code."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from . import bench as bench_module

        return bench_module.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (_UsageError, InvalidOptionError) as exc:
        if args.debug:
            raise
        print(f"mtpstream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (MTPError, OSError, ValueError) as exc:
        if args.debug:
            raise
        print(f"mtpstream {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
