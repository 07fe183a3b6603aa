"""Your own speculative loop: greedy verify on a target Context, drafts from a DraftSession.

    python examples/draft_session.py MODEL [--n-draft K] [--max-tokens N] [--prompt TEXT]
                                      [--draft-model SIDECAR]

The last line printed is a JSON object: the prompt's token ids, the generated
``tokens`` and the ``acceptance`` (accepted / drafted). Greedy, so the tokens are
exactly plain decoding's.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import mtpstream


def generate(
    target: mtpstream.Context,
    session: mtpstream.DraftSession,
    prompt: list[int],
    n_draft: int,
    max_tokens: int,
) -> tuple[list[int], int, int]:
    """Tokens of sequence 0 after ``prompt``, drafts made and drafts accepted."""
    batch = mtpstream.Batch(max(target.n_batch, n_draft + 1))
    for start in range(0, len(prompt), target.n_batch):  # the prompt, a batch at a time
        batch.clear()
        chunk = prompt[start : start + target.n_batch]
        batch.add_sequence(chunk, start, 0, logits_last=start + len(chunk) == len(prompt))
        target.decode(batch)
        session.process(batch)
    last, n_past = int(np.argmax(target.logits(len(batch) - 1))), len(prompt)
    out, drafted, accepted = [last], 0, 0
    while len(out) < max_tokens and not target.model.is_eog(last):
        drafts = session.draft(0, n_past, last, n_draft=min(n_draft, max_tokens - len(out) - 1))
        batch.clear()
        for i, t in enumerate([last, *drafts]):
            batch.add(t, n_past + i, 0, logits=True)
        target.decode(batch)
        session.process(batch)
        n_acc = 0
        token = int(np.argmax(target.logits(0)))
        while n_acc < len(drafts) and token == drafts[n_acc] and not target.model.is_eog(token):
            n_acc += 1
            token = int(np.argmax(target.logits(n_acc)))
        session.accept(0, n_acc)
        if n_acc < len(drafts):
            target.remove(0, n_past + n_acc + 1)  # the rejected drafts
        out += [*drafts[:n_acc], token]
        drafted, accepted = drafted + len(drafts), accepted + n_acc
        n_past, last = n_past + n_acc + 1, token
    return out[:max_tokens], drafted, accepted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--n-draft", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt", default="Write a haiku about the sea:")
    ap.add_argument("--draft-model", default=None, help="an MTP-only sidecar GGUF")
    args = ap.parse_args()
    model = mtpstream.load_model(args.model)
    head = mtpstream.load_model(args.draft_model) if args.draft_model else model
    prompt = model.tokenize(args.prompt)
    n_ctx = len(prompt) + args.max_tokens + args.n_draft + 8
    # no flash attention: a verify batch then matches single-token decoding (README, "Exactness")
    with (
        mtpstream.Context(model, "target", n_ctx=n_ctx, n_rs_seq=args.n_draft, flash_attn=False) as target,
        mtpstream.Context(head, "mtp", n_ctx=n_ctx, flash_attn=False) as draft,
        mtpstream.DraftSession(target, draft, n_draft_max=args.n_draft) as session,
    ):
        tokens, drafted, accepted = generate(target, session, prompt, args.n_draft, args.max_tokens)
    print(model.detokenize(tokens))
    print(
        json.dumps({"prompt": prompt, "tokens": tokens, "acceptance": accepted / drafted if drafted else 0.0})
    )


if __name__ == "__main__":
    main()
