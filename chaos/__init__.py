"""``python -m chaos`` (``make chaos``): asynctask's delivery promise under faults.

For each transport it runs thousands of tasks through ``asynctask workers`` while it kills
children, restarts the server, drops connections, stops the supervisor and feeds poison,
then counts from a ledger kept outside the transport: tasks lost (must be 0), tasks
completed twice (each within the bound its faults allow), poison in the failed store
(must be all) and how long each fault cost.

Modules: ``ledger`` (what the workers record), ``workers`` (the task worker, imported by
the children with ``--import chaos.workers``), ``servers`` (each backend: its URI, how to
restart it, drop its connections and write bad messages by hand), ``supervisor`` (a running
``asynctask workers``), ``scenarios`` (the faults and the counts), ``report`` (the table
and docs/reliability.md).
"""
