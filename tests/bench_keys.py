"""The key tree of a ``mtpstream bench`` JSON result: what its shape is, not its figures.

``tests/data/bench-keys-*.json`` hold the trees of results written before the bench's
results became dataclasses; ``test_bench`` checks that today's results have the same.
Regenerate one (only when the JSON is meant to change) with
``python tests/bench_keys.py RESULT.json > tests/data/bench-keys-NAME.json``.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def key_tree(value: Any) -> Any:
    """Dicts keep their keys (values replaced by their trees); a list becomes the list of
    its distinct element trees; every scalar (None included) becomes ``"*"``."""
    if isinstance(value, dict):
        return {k: key_tree(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        trees: list[Any] = []
        for item in value:
            tree = key_tree(item)
            if tree not in trees:
                trees.append(tree)
        return trees
    return "*"


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        print(json.dumps(key_tree(json.load(f)), indent=1, sort_keys=True))
