"""asynctask-web: the ``asynctask web`` dashboard (DESIGN.md section 8).

``create_app(transport)`` is the ASGI application; the ``web`` command serves it with
uvicorn. It reads and changes queues through the public ``Transport`` API only, so it
works with every transport, ours or a third party's.
"""

from __future__ import annotations

from asynctask_web.app import create_app

__all__ = ["create_app"]
