"""Housekeeping tasks that may run on any queue."""

from __future__ import annotations

import os
import socket

from schemas.messages import PingTask
from workers.tasks.app import app


@app.task(name="valueflow.ping", bind=True, ignore_result=False)
def ping(self, **body) -> dict:
    """Echo through the broker: proves a worker consumes the queue it was sent to."""
    msg = PingTask(**body)
    return {"payload": msg.payload, "pid": os.getpid(), "host": socket.gethostname(),
            "queue": (self.request.delivery_info or {}).get("routing_key")}
