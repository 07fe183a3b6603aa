"""``mtpstream bench``: benchmarks of MTP speculative decoding.

Built on the public API only (``mtpstream.init``, ``stream_events``, ``stats()``)
and the synthetic models of :mod:`mtpstream.testing`; llama-server, built from the
llama.cpp that llama-cpp-python vendors, is the referee for acceptance and speed.
Each measurement returns a dataclass whose ``as_json()`` is its section of the JSON
result; progress goes to the ``mtpstream.bench`` loggers, which ``mtpstream bench``
prints on stderr (:func:`progress_on_stderr`).

* :mod:`.runner`: the command line, the configuration and the run of every scenario;
* :mod:`.measure`: settings, levels, one timed generation and the n_draft grid;
* :mod:`.reference`: time to first token, the async layer, ``stats()`` latency, idle
  sessions (on the reference level);
* :mod:`.streams`: many concurrent calls on ``n_seq`` sequences;
* :mod:`.chat`: a multi-turn conversation, prompt cache warm against cold;
* :mod:`.upstream`: the same measurements on llama-server;
* :mod:`.report`: the summary, Markdown tables, plot and JSON; :mod:`.targets`: derived
  figures and targets;
* :mod:`.env`: the machine, its load and the statistics (medians, bootstrap intervals).
"""

from __future__ import annotations

from .runner import BenchConfig, main, progress_on_stderr, run

__all__ = ["BenchConfig", "main", "progress_on_stderr", "run"]
