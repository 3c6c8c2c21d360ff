-- Version 10: worker processes say they are alive, so a watcher can tell a chunk whose worker died
-- (re-send it) from one a slow worker is still running (leave it). `process` names one run of one
-- process as chunks.last_worker does (host:pid:start time, so a restarted container that reuses the
-- hostname and pid is another process); a beat is good until `expires_at` (4 of its own intervals).
CREATE TABLE IF NOT EXISTS worker_heartbeats (
    process text PRIMARY KEY,
    seen_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
