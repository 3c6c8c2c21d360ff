-- Version 11: when the workers last swept for lost work (workers/tasks/sweeper.py), so that however
-- many workers there are, the sweep runs about once per VALUEFLOW_SWEEP_S, not once per worker.
CREATE TABLE IF NOT EXISTS sweeps (
    id int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    swept_at timestamptz NOT NULL
);
