"""Command line: ``python -m mtpstream.testing make|info ...``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from ._api import describe, load_model, make_model
from ._config import ARCHS, KINDS, SIZES, WEIGHTS


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m mtpstream.testing", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    mk = sub.add_parser("make", help="write (or find in the cache) a synthetic model and print its path")
    mk.add_argument("--arch", choices=ARCHS, default="qwen35")
    mk.add_argument("--weights", choices=WEIGHTS, default="oracle")
    mk.add_argument("--size", choices=SIZES, default="tiny")
    mk.add_argument("--mtp-error-rate", type=float, default=0.25)
    mk.add_argument("--kind", choices=KINDS, default="mtp")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--cache-dir", default=None)
    mk.add_argument("--time", action="store_true", help="report the elapsed time on stderr")

    info = sub.add_parser("info", help="describe a GGUF file (metadata and tensors) as JSON")
    info.add_argument("path")
    info.add_argument("--tensors", action="store_true", help="include the tensor list")

    args = parser.parse_args(argv)
    if args.cmd == "make":
        t0 = time.perf_counter()
        path = make_model(
            arch=args.arch,
            weights=args.weights,
            size=args.size,
            mtp_error_rate=args.mtp_error_rate,
            seed=args.seed,
            kind=args.kind,
            cache_dir=args.cache_dir,
        )
        if args.time:
            print(f"{time.perf_counter() - t0:.2f}s", file=sys.stderr)
        print(path)
        return 0
    d = describe(args.path)
    if not args.tensors:
        d["n_tensors"] = len(d.pop("tensors"))
    try:
        m = load_model(args.path)
    except ValueError:
        pass
    else:
        if m.spec is not None:
            d["oracle"] = {
                "chain_start": m.spec.chain_start,
                "stop_word": m.spec.stop_word,
                "stop_token_id": m.spec.stop_token_id,
                "eos_token_id": m.spec.eos_token_id,
                "n_error_tokens": len(m.spec.error_tokens),
            }
        if m.soft is not None:
            d["soft"] = {
                "target_logits": m.soft.target_logits,
                "head_logits": m.soft.head_logits,
                "rejection_acceptance_t1": m.soft.rejection_acceptance(1.0),
                "match_acceptance_t1": m.soft.match_acceptance(1.0),
            }
    json.dump(d, sys.stdout, indent=2, default=str)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
