-- Version 10: worker processes say they are alive (every VALUEFLOW_HEARTBEAT_S), so a watcher can
-- tell a chunk whose worker died (re-send it) from one a slow worker is still running (leave it).
-- `process` is host:pid, as chunks.last_worker records it.
CREATE TABLE IF NOT EXISTS worker_heartbeats (
    process text PRIMARY KEY,
    seen_at timestamptz NOT NULL
);
