"""The ``redis`` transport of asynctask (Redis through redis-py)."""
