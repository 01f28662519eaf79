"""The ``filesys:`` transport of asynctask: one folder per queue, one file per task."""
