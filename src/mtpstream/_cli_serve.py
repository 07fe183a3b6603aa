"""``mtpstream serve``: its arguments (named as llama-server spells them where they mean
the same) and the command itself."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from . import __version__
from ._cli_common import UsageError, add_session_args, load, session
from ._cli_rpc import add_rpc_args, rpc_load_options
from ._console import Field, print_fields
from ._reasoning import REASONING_FORMATS
from .errors import InvalidOptionError, MTPError
from .options import GGML_TYPES, MAX_THREADS, SessionOptions, validate

__all__ = ["add_serve_args"]

# the library option each runtime flag sets, for errors that name the flag
FLAGS = {
    "n_gpu_layers": "--n-gpu-layers",
    "n_cpu_moe": "--n-cpu-moe",
    "use_mmap": "--mmap",
    "n_threads": "--threads",
    "n_threads_batch": "--threads-batch",
    "n_batch": "--batch-size",
    "n_ubatch": "--ubatch-size",
    "flash_attn": "--flash-attn",
    "type_k": "--cache-type-k",
    "type_v": "--cache-type-v",
    "n_ctx": "--n-ctx",
    "n_seq": "--n-seq",
    "n_draft": "--n-draft",
}
_FLASH_ATTN = {"on": True, "off": False, "auto": None}
_INT32_MAX = 2**31 - 1


# ------------------------------------------------------------------ argument types
def _count(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, not {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must lie in {low}..{high}, not {value}")
        return value

    return parse


def gpu_layers(text: str) -> int | None:
    """``auto`` (llama.cpp's default: None), ``all`` (-1) or a count."""
    if text == "auto":
        return None
    if text == "all":
        return -1
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a count, 'auto' or 'all', not {text!r}") from None
    if not 0 <= value <= _INT32_MAX:
        raise argparse.ArgumentTypeError(f"must be >= 0 (or 'all'), not {value}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _origins(text: str) -> list[str]:
    found = [o.strip() for o in text.split(",")]
    for origin in found:
        if origin != "*" and not (origin.startswith(("http://", "https://")) and "/" not in origin[8:]):
            raise argparse.ArgumentTypeError(
                f"an origin is '*' or scheme://host[:port] without a path, not {origin!r}"
            )
    return found


# ------------------------------------------------------------------ what the flags set
def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``load_model`` keywords of the runtime flags."""
    n_cpu_moe: int | str = "all" if args.cpu_moe else args.n_cpu_moe
    return {
        "n_gpu_layers": args.n_gpu_layers,
        "use_mmap": args.mmap,
        "n_cpu_moe": n_cpu_moe,
        **rpc_load_options(args),
    }


def context_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``init`` context keywords of the runtime flags (unset ones left out)."""
    out: dict[str, Any] = {
        "n_threads": args.threads,
        "n_threads_batch": args.threads_batch,
        "n_batch": args.batch_size,
        "n_ubatch": args.ubatch_size,
        "flash_attn": _FLASH_ATTN[args.flash_attn],
        "type_k": args.cache_type_k,
        "type_v": args.cache_type_v,
    }
    return {k: v for k, v in out.items() if v is not None}


def _check_session_options(args: argparse.Namespace) -> None:
    """The session options as ``init`` will check them, before the model loads."""
    values = {"n_draft": args.n_draft, "n_ctx": args.n_ctx, "n_seq": args.n_seq, **context_options(args)}
    validate(SessionOptions, values)
    b, ub = args.batch_size, args.ubatch_size
    if b is not None and ub is not None and ub > b:
        raise UsageError(f"--ubatch-size ({ub}) must not exceed --batch-size ({b})")


def usage_error(exc: InvalidOptionError) -> UsageError:
    """``exc`` as a usage error naming the flag of its option."""
    flag = FLAGS.get(exc.field or "")
    return UsageError(f"{flag}: {exc}" if flag else str(exc))


def _serve_limits(args: argparse.Namespace) -> Any:
    from .server_limits import ServerLimits, allowed_hosts

    extra = tuple(h for item in args.allowed_hosts or () for h in item.split(","))
    origins = tuple(dict.fromkeys(o for item in args.cors_origins or () for o in item))
    try:
        return ServerLimits(
            max_queue=args.max_queue,
            max_body_bytes=args.max_body_bytes,
            header_timeout=args.header_timeout,
            body_timeout=args.body_timeout,
            stream_idle_timeout=args.stream_idle_timeout,
            keep_alive_timeout=args.keep_alive_timeout,
            max_connections=args.max_connections,
            shutdown_grace=args.shutdown_grace,
            allowed_hosts=tuple(sorted(allowed_hosts(args.host, extra))),
            report_cached_tokens=args.report_cached_tokens,
            cors_origins=origins,
        )
    except ValueError as exc:
        raise UsageError(str(exc).replace("_", "-")) from None


def _serve_keys(args: argparse.Namespace) -> tuple[str, ...]:
    from .server_limits import resolve_api_keys

    try:
        return resolve_api_keys(args.api_key, args.api_key_file)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# ------------------------------------------------------------------ the command
def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from ._server_uvicorn import GracefulServer, config
        from .server import create_app
    except ImportError:
        raise MTPError("the server needs FastAPI and uvicorn: pip install 'mtpstream[server]'") from None
    limits, api_keys = _serve_limits(args), _serve_keys(args)
    try:
        _check_session_options(args)
        model = load(args.model, args.quiet, args.repack, **load_options(args))
        with model, session(model, args, **context_options(args)) as mtp:
            mtp.allow_request_templates = args.allow_request_templates
            defaults = {
                "reasoning_format": args.reasoning_format,
                "chat_template_kwargs": args.chat_template_kwargs,
            }
            app = create_app(
                mtp, model_alias=args.model_alias, api_key=api_keys, limits=limits, chat_defaults=defaults
            )
            _print_start(args, mtp, app, api_keys)
            # on SIGINT/SIGTERM running requests get --shutdown-grace seconds to finish, then
            # they end with an error (and their generations are cancelled)
            server = GracefulServer(config(app, args.host, args.port, limits), app.state.lifecycle, limits)
            server.run()
            if server.started is False and not server.should_exit:
                raise MTPError(f"could not serve on {args.host}:{args.port}")
    except InvalidOptionError as exc:
        raise usage_error(exc) from None
    print("server stopped", file=sys.stderr)
    return 0


def _print_start(args: argparse.Namespace, mtp: Any, app: Any, api_keys: tuple[str, ...]) -> None:
    """The start banner on stderr: where, what, how, which endpoints, and the keys in use
    (how many, never the keys)."""
    limits = app.state.server.limits
    host = f"[{args.host}]" if ":" in args.host else args.host
    n_draft = "auto" if mtp.auto_draft else mtp.n_draft
    fields: list[Field] = [
        ("url", f"http://{host}:{args.port}/v1"),
        ("model", f"{mtp.model.path}"),
        ("alias", args.model_alias or mtp.model_name),
        (
            "decoding",
            f"n_seq={mtp.n_seq}, n_ctx={mtp.n_ctx}, n_draft={n_draft}, rollback={mtp.rollback or 'none'}",
        ),
        ("endpoints", "\n".join(f"{m:<6} {' '.join(paths)}" for m, paths in app.state.endpoints.items())),
        ("API keys", _keys_text(api_keys, limits.allowed_hosts)),
    ]
    if limits.cors_origins:
        fields.append(("CORS origins", ", ".join(limits.cors_origins)))
    print_fields(fields, sys.stderr, title=f"mtpstream {__version__} serve")
    if "*" in limits.cors_origins and not api_keys:
        print(
            "warning: --cors-origins '*' without an API key lets any web page use this server",
            file=sys.stderr,
        )
    sys.stderr.flush()


def _keys_text(api_keys: tuple[str, ...], allowed_hosts: tuple[str, ...]) -> str:
    if api_keys:
        n = len(api_keys)
        return f"{n} key{'s' if n > 1 else ''} in use ('Authorization: Bearer KEY' or 'x-api-key: KEY')"
    if "*" in allowed_hosts:
        return "none; any Host name is served (--allowed-hosts '*')"
    return f"none; Host names are checked: {', '.join(allowed_hosts)} (--allowed-hosts adds more)"


# ------------------------------------------------------------------ the arguments
def add_serve_args(serve: argparse.ArgumentParser) -> None:
    add_session_args(serve, with_sampling=False)
    serve.add_argument("--n-seq", type=int, default=4, help="requests decoded together (default 4)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model-alias", default=None, help="the model name clients see (default: file stem)")
    key = serve.add_argument_group("API key (else $MTPSTREAM_API_KEY; none: Host names are checked)")
    key.add_argument(
        "--api-key",
        action="append",
        metavar="KEY[,KEY]",
        help="require 'Authorization: Bearer KEY' or 'x-api-key: KEY'; repeat or comma-separate "
        "for several (visible in ps)",
    )
    key.add_argument("--api-key-file", default=None, metavar="PATH", help="keys, one per line (# comments)")
    key.add_argument(
        "--allowed-hosts",
        action="append",
        metavar="HOST[,HOST]",
        help="Host names served without a key, besides loopback and --host ('*': any)",
    )
    key.add_argument(
        "--cors-origins",
        action="append",
        type=_origins,
        metavar="ORIGIN[,ORIGIN]",
        help="web origins (scheme://host[:port]) whose pages may call the server from a browser; "
        "'*': any page (unsafe without an API key)",
    )
    _add_runtime_args(serve)
    _add_limit_args(serve)
    _add_chat_args(serve)
    serve.set_defaults(func=cmd_serve)


def _add_runtime_args(serve: argparse.ArgumentParser) -> None:
    run = serve.add_argument_group("runtime (llama-server's names)")
    run.add_argument(
        "-ngl",
        "--gpu-layers",
        "--n-gpu-layers",
        dest="n_gpu_layers",
        type=gpu_layers,
        default=None,
        metavar="N",
        help="layers stored in VRAM: a count, 'auto' (default: llama.cpp's) or 'all'",
    )
    run.add_argument(
        "-cmoe", "--cpu-moe", action="store_true", help="keep every MoE expert weight in CPU memory"
    )
    run.add_argument(
        "-ncmoe",
        "--n-cpu-moe",
        type=_count(0, _INT32_MAX),
        default=0,
        metavar="N",
        help="keep the MoE expert weights of the first N layers in CPU memory",
    )
    run.add_argument(
        "--mmap",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="map the model file (default), or read the weights into memory (--no-mmap)",
    )
    run.add_argument(
        "-fa", "--flash-attn", choices=sorted(_FLASH_ATTN), default="auto",
        help="flash attention (default auto)",
    )  # fmt: skip
    kv_types = sorted(GGML_TYPES)
    for short, flag in (("-ctk", "--cache-type-k"), ("-ctv", "--cache-type-v")):
        run.add_argument(
            short, flag, choices=kv_types, default=None, metavar="TYPE",
            help=f"KV cache type of {flag[-1].upper()}: {', '.join(kv_types)} (default f16)",
        )  # fmt: skip
    threads = _count(1, MAX_THREADS)
    run.add_argument(
        "-t", "--threads", type=threads, default=None, metavar="N", help="threads (default: all cores)"
    )
    run.add_argument(
        "-tb", "--threads-batch", type=threads, default=None, metavar="N",
        help="threads for prompts and verify batches (default: --threads)",
    )  # fmt: skip
    batch = _count(1, _INT32_MAX)
    for short, flag, text in (("-b", "--batch-size", "logical"), ("-ub", "--ubatch-size", "physical")):
        run.add_argument(short, flag, type=batch, default=None, metavar="N", help=f"{text} batch size")
    add_rpc_args(serve)


def _add_limit_args(serve: argparse.ArgumentParser) -> None:
    lim = serve.add_argument_group("limits")
    lim.add_argument(
        "--max-queue", type=int, default=None, help="waiting requests beyond n_seq; more get 429"
    )
    lim.add_argument(
        "--max-body-bytes", type=int, default=4 * 2**20, help="larger request bodies get 413 (default 4 MiB)"
    )
    for flag, default, text in (
        ("--stream-idle-timeout", 30.0, "drop a client that reads nothing for this long"),
        ("--header-timeout", 10.0, "the request headers must arrive within this"),
        ("--body-timeout", 30.0, "the request body must arrive within this (408)"),
        ("--keep-alive-timeout", 5.0, "close idle keep-alive connections after this"),
        ("--shutdown-grace", 3.0, "on SIGINT/SIGTERM running requests get this long"),
    ):
        lim.add_argument(
            flag, type=float, default=default, metavar="S", help=f"{text} (default {default:g} s)"
        )
    lim.add_argument("--max-connections", type=int, default=256, help="more get 503 (default 256)")
    lim.add_argument(
        "--grammar-budget",
        type=float,
        default=5.0,
        metavar="S",
        help="each new grammar is built and tried on a few tokens in a checker process; one that "
        "takes longer gets 400 (default 5 s)",
    )
    lim.add_argument(
        "--grammar-step-budget",
        type=float,
        default=1.0,
        metavar="S",
        help="a grammar step (build, apply, accept) taking longer refuses the grammar, or ends "
        "the request during generation (default 1 s); one not finished after 3x this + 2 s "
        "has the grammar host killed",
    )
    lim.add_argument(
        "--grammar-memory",
        type=int,
        default=4096,
        metavar="MIB",
        help="address-space cap of the grammar checker and grammar host processes "
        "(default 4096, at least 512 MiB)",
    )
    lim.add_argument(
        "--report-cached-tokens",
        action="store_true",
        help="report usage.prompt_tokens_details.cached_tokens (off: it tells a client whether "
        "another one sent the same prompt)",
    )


def _add_chat_args(serve: argparse.ArgumentParser) -> None:
    chat = serve.add_argument_group("chat")
    chat.add_argument(
        "--reasoning-format",
        choices=sorted(REASONING_FORMATS),
        default="parsed",
        help="parsed (default; llama-server's auto/deepseek): the text between the template's "
        "think markers goes to reasoning_content; raw (llama-server's none): it stays in content",
    )
    chat.add_argument(
        "--chat-template-kwargs",
        type=_json_object,
        default=None,
        metavar="JSON",
        help="variables for the chat template by default, e.g. '{\"enable_thinking\": false}' "
        "(a request's chat_template_kwargs override them key by key)",
    )
    chat.add_argument(
        "--allow-request-templates",
        action="store_true",
        help="accept a request's own chat_template (a template is a program; it still renders "
        "within time and size limits)",
    )
