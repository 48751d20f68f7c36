"""The study drivers: each trains (on the harness's one loop, ``lawn.harness.train.fit``) or reports one committed
study of docs/results.md. Run one as ``python -m lawn.harness.studies.<name> --help``.

- ``afan``: the A-FAN study's tables, plot and per-step cost, from its sweep rows;
- ``lawn_paper``: tables and the mechanism plot of "LAWN as the paper runs it", from its sweep rows;
- ``nested``: Bayesian nested networks vs fixed-rate nested dropout (trains every arm);
- ``unification``: weight unification and pruning, ADMM vs one-shot projection (trains every arm).

``benchmarks/`` holds what measures speed; nothing here is imported by ``lawn`` itself.
"""
