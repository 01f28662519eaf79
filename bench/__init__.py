"""``python -m bench``: asynctask's speed beside the raw clients, on every installed transport.

Modules: ``plan`` (what to measure and how much), ``workers`` (the no-op worker),
``ledger`` (the file where workers note when they start a task), ``ours`` (measures through
the Transport API and ``asynctask workers``), ``raw`` (the same measures with the plain
client), ``wake`` (a raw client's blocking wait, in its own process), ``report`` (table,
Markdown, chart, JSON).
"""
