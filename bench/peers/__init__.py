"""The peers: other Python task queues draining the same no-op tasks on the same servers.

Each module here is run by the bench-only venv's Python (``make bench PEERS=1`` makes
``.venv-peers`` from ``bench/peers/requirements.txt``; none of them is ever one of the
project's dependencies) as ``python -m bench.peers.<module> URL COUNT FOLDER``: it fills
COUNT no-op tasks with the peer's own client, runs the peer's own worker command with one
worker process, waits until every task has started, stops the worker and prints one JSON
line: the rate from the first task's start to the last's, as ``bench.ours.drain_rate``
counts ours. ``bench.peer`` is the harness's side. Only ``bench.peers.common`` and
``bench.ledger`` (standard library only) are shared with the project.
"""
