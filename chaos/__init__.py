"""The chaos suite: many runs of the demo pipeline under worker kills, a Redis restart, erratic
webhooks and bad input, then every run checked against the guarantees.

``make chaos`` (``python -m chaos``) starts its own deployment on loopback: a Redis with an
append-only file, several prefork Celery workers, the webhook receiver and the simulated video
provider, all as subprocesses, each the same command a deployment runs. ``tests/test_chaos.py``
runs a scaled-down version in ``make test``.

- ``config``: what one chaos run does (``ChaosConfig``).
- ``deployment``: the processes, and the faults done to them.
- ``load``: starting, cancelling and waiting for runs; the reconciler loop.
- ``probes``: bad input to the receiver and to the store, each checked to be refused and to
  change nothing.
- ``checks``: the per-run verdicts.
- ``report``: the summary table and its JSON.
- ``runner``: one chaos run, start to finish.
"""
