"""Benchmark at scale: a million runs on one Redis and on a 3-master Redis Cluster.

Run ``make bench-scale`` (or ``python -m benchmarks.scale [--quick] [--runs N]``). It starts a
private redis-server and a private 3-master cluster on free loopback ports
(``mpstate.testing``; never the machine's own Redis), with no snapshots, no AOF and no
``maxmemory``, and then, on each:

1. loads the runs through the public API from several loader processes, each with its own store:
   ``runs`` runs over 100 tenants (plus a 1,000-run tenant), each created with three steps (every
   tenth with an idempotency key), started by a versioned commit (status running, run-started and
   step-started) and advanced by a second one (a quarter complete: step-completed and
   run-completed; the rest log step-progress and step-completed): 5 events per run;
2. measures memory: ``used_memory`` before and after (summed over the masters), and directly,
   with ``MEMORY USAGE``, a sample of run hashes and event streams, every index key, a sample of
   idempotency keys and of the write-dedupe ("op") keys that expire 10 minutes after each write;
3. measures throughput of create, a versioned commit with a status change and one without, with
   1, 8 and 32 concurrent clients: threads sharing one sync store, and asyncio tasks sharing one
   async store, in one client process. Each is a ratio to a raw round trip (EVALSHA of ``return
   1``) measured with the same clients and concurrency right before and after it, and single and
   cluster alternate within each round, so the cluster/single ratio compares like with like;
4. measures ``list_runs`` page latency (50 runs, first page and a deep offset) on the 1,000-run
   tenant, a ``runs / 100`` tenant and the global index of every run, in random order.

Both deployments stay up to the end (the throughput rounds alternate them), so the machine needs
about 9 KB of RAM per run for each: some 19 GB for the default million. Ratios are medians over
rounds. Targets are reported as PASS/MISS and never fail the run: the
machine is shared and noisy. Results go to ``benchmarks/results/scale.json`` (``--output``).

``--spread`` measures only each primary's share of the cluster's server CPU under a create-heavy
load, with the global indexes in one slot (the layout before) and in their shards (``spread``;
results in ``benchmarks/results/scale-spread.json``).

The parts, one module each: ``config`` (sizes and modes), ``loading`` (the loader processes and
the two deployments), ``memory`` (the memory probes), ``listing`` (``list_runs`` pages),
``throughput`` (the concurrent clients), ``spread`` (the primaries' CPU shares), ``tables`` (the
report) and ``cli`` (the entry point).
"""
