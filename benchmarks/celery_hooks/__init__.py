"""Benchmark of mpstate's Celery step hooks: no-op ``PipelineTask`` steps against bare Celery.

Run ``make bench`` (or ``python -m benchmarks.celery_hooks [--quick]``). It starts a private
redis-server on a free loopback port (``mpstate.testing.RedisServer``) that is both the Celery
broker (kombu's keys) and the store (``RedisPipelineStateStore`` under the key prefix
``mpbench``), and one real Celery worker: the solo pool in a thread of this process
(``celery.contrib.testing.worker.start_worker``). The same worker, broker and app serve all kinds.

Each round measures four kinds in short alternating backlogs (bare, chain, floor, hooks, ...; the
order rotates from round to round so no kind always goes first) so all see the same machine load,
which on this kind of shared 2-CPU machine flips between fast and slow regimes every few seconds:

- **bare**: ``runs x steps`` no-op tasks (``@app.task``, no arguments, results ignored), all
  published by this process;
- **chain**: ``runs`` bare Celery chains of ``steps`` links of the same no-op task
  (``chain(noop.si(), ...).delay()``): the worker publishes each next link when the previous one
  finishes, as mpstate does for its steps, so this is the fair baseline for the hooks;
- **floor**: ``runs`` runs of ``steps`` plain tasks that do what no run-state layer can avoid and
  nothing more: per step, two round trips of the least durable write (a one-``HSET``, one-``XADD``
  script: the step started, then completed), then, from the worker, a publish of the next step
  with a message like the hooks' (kwargs and headers naming the run and step, a task id, publish
  retries); the publisher makes one such write per run before its first step. Its ratio to the
  chain is the most the hooks' ratio can reach on this machine: the goal below is reachable here
  only if the floor meets it;
- **hooks**: ``runs`` runs of ``steps`` no-op ``PipelineTask`` steps, each started with
  ``MpState.start_run``. Every step goes through step-started and step-completed (each a read and
  a versioned commit of the run), and all but the last enqueue the next step from the worker.

A round is a backlog drain, like the baseline in ``notes/celery-facts.md``: a gate task holds the
solo worker while the backlog is published (``.delay()`` for bare and chain, ``start_run`` for
hooks), then the gate is released and the clock runs until the last task's ``task_postrun`` (for
hooks the last run is then completed; every backlog checks that all its runs are). steps/s is the
drain rate of a kind's backlogs in a round taken together (a chain's step is one link); a ratio
is one kind over another in the same round, and the report gives medians over rounds.
"end to end" adds the publish phase (from the first publish to the last task's completion).

The worker runs in a thread so that the clock, the store's round-trip counter and the profiler
see it directly; the main thread only waits on an event while the worker drains, so it does not
compete for the GIL. Store round trips are counted on the store client's connections (one per
request written), split into the publisher's (``start_run``) and the worker's (the hooks). Redis
commands and their server time come from ``INFO commandstats`` over the whole backlog (publish
and drain), per kind, so the store's share is hooks minus chain (the broker's commands per step
are the same on both sides: one publish per step, by the worker for all but the first); hooks
minus bare is reported too.

The goals (the constants in ``config``, issue 17): hooks >= ``CHAIN_RATIO_GOAL`` x the bare
chain, end to end (and the floor against the same figure: whether the goal can be met here);
the store's Redis CPU per step (hooks minus chain) <= ``STORE_SERVER_US_GOAL``; the store's
Redis commands per step (hooks minus chain) <= ``STORE_COMMANDS_GOAL``; and the store's round
trips per step, reported against their floor (``STORE_ROUND_TRIPS_FLOOR``). They are printed
as PASS/MISS and never fail the run: the machine is shared and noisy.

After the measured rounds, one more hooks round runs with timing wrappers around the hooks, the
store calls and the enqueue (instance and module attributes patched in this process only) and
prints where a step's time goes. ``--profile hooks|chain|bare`` instead runs cProfile inside the
worker thread for one round.

Results go to ``benchmarks/results/celery_hooks.json`` (``--output`` to change).
The parts, one module each: ``config`` (names, sizes and the goals), ``spans`` (the timing
wrappers), ``worker`` (the app, its worker thread and one backlog's drain), ``summary`` (the
figures over the rounds, the goals and the tables), ``profiling`` (the breakdown round and the
cProfile round) and ``cli`` (the entry point).
"""
