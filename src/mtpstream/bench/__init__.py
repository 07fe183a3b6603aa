"""``mtpstream bench``: benchmarks of MTP speculative decoding.

Built on the public API only (``mtpstream.init``, ``stream_events``, ``stats()``)
and the synthetic models of :mod:`mtpstream.testing`; llama-server, built from the
llama.cpp that llama-cpp-python vendors, is the referee for acceptance and speed.

* :mod:`.runner`: the command line, the configuration and the run of every scenario;
* :mod:`.measure`: the n_draft grid, time to first token, the async layer, ``stats()``
  latency, idle sessions;
* :mod:`.streams`: many concurrent calls on ``n_seq`` sequences;
* :mod:`.chat`: a multi-turn conversation, prompt cache warm against cold;
* :mod:`.upstream`: the same measurements on llama-server;
* :mod:`.report`: derived figures, targets and Markdown tables;
* :mod:`.env`: the machine, its load and the statistics (medians, bootstrap intervals).
"""

from __future__ import annotations

from .runner import BenchConfig, main, run

__all__ = ["BenchConfig", "main", "run"]
