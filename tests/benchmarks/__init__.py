"""Benchmarks of change-relay: throughput against its limits, memory per entity, fleet idle cost, restore time,
incremental latency and the per-record cost (``python -m tests.benchmarks``; ``make bench``).

They are not tests: nothing here is collected by pytest (files are named ``bench_*.py``) and ``make test`` does not
run them. They print figures and save them in ``results/``: ``latest.json``, ``latest.md`` and a PNG per scaling
curve. Every benchmark starts its own Kafka broker (fresh data directory) and runs the relay and the simulator as
separate processes.
"""
