"""``chronoserve edge-bench``: a benchmark for small boards, pinned to k cores, after MLPerf's rules.

- :mod:`~chronoserve.edge.runner`: one run through the serving engine (SingleStream or Offline);
- :mod:`~chronoserve.edge.rules`: run rules, statistics and the VALID/INVALID verdict;
- :mod:`~chronoserve.edge.early_stopping`: MLPerf LoadGen's early-stopping percentile estimate;
- :mod:`~chronoserve.edge.pinning`: core affinity and torch thread settings, applied and checked;
- :mod:`~chronoserve.edge.metadata`: the machine and software a result came from;
- :mod:`~chronoserve.edge.report` and :mod:`~chronoserve.edge.plots`: summary, table, PNGs.

Each configuration runs in its own pinned process (forked from :mod:`chronoserve.forkserver`'s
fork server; ``python -m chronoserve.edge`` where there is none). This
package imports nothing heavy; see ``docs/edge.md``.
"""
