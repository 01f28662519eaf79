"""asynctask-web: the ``asynctask web`` dashboard (DESIGN.md section 8).

``asynctask_web.app.create_app(transport)`` is the ASGI application; the ``web`` command
serves it with uvicorn. It reads and changes queues through the public ``Transport`` API
only, so it works with every transport, ours or a third party's.

Nothing is imported here: every ``asynctask`` run loads the plugin module of this
package, and Starlette loads only when the dashboard starts.
"""
