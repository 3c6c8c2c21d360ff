-- Version 2: one lifecycle for every job kind (stages + finalize), judge telemetry, judge health.

ALTER TABLE jobs ADD COLUMN n_stages smallint NOT NULL DEFAULT 2;
ALTER TABLE jobs ADD COLUMN finalize_runs integer NOT NULL DEFAULT 0;   -- committed finalize steps
ALTER TABLE jobs ADD COLUMN error text;
CREATE INDEX jobs_by_state ON jobs (state, created_at);

-- chunks walk the kind's stages: (stage, state) replaces the old pending/judged/scored states
ALTER TABLE chunks ADD COLUMN stage smallint NOT NULL DEFAULT 0;
ALTER TABLE chunks ADD COLUMN error text;
ALTER TABLE chunks ADD COLUMN started_at timestamptz;
UPDATE chunks SET stage = 1, state = 'pending' WHERE state = 'judged';
UPDATE chunks SET stage = 1, state = 'done' WHERE state = 'scored';
CREATE INDEX chunks_by_state ON chunks (job_id, state, stage);

-- windows of any kind: VIDB ranking windows have no scored item and no anchors
ALTER TABLE windows ALTER COLUMN item_no DROP NOT NULL;
ALTER TABLE windows ALTER COLUMN target_pos DROP NOT NULL;
ALTER TABLE windows ALTER COLUMN anchor_ids SET DEFAULT '{}';
ALTER TABLE windows ALTER COLUMN anchor_intensity SET DEFAULT '{}';
-- per-window judge telemetry (kept, summarised by `jobs status`)
ALTER TABLE windows ADD COLUMN judged_at timestamptz;
ALTER TABLE windows ADD COLUMN latency_s real;
ALTER TABLE windows ADD COLUMN tokens_in integer;
ALTER TABLE windows ADD COLUMN tokens_out integer;
ALTER TABLE windows ADD COLUMN attempts smallint;
ALTER TABLE windows ADD COLUMN cached boolean;
ALTER TABLE windows ADD COLUMN failure_cause text;   -- short class of `failure` for grouping

-- judge health per (job, value, judge): how the judge ordered anchors of known intensity
CREATE TABLE judge_health (
    job_id            text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    value             text NOT NULL,
    judge             text NOT NULL,
    windows           integer NOT NULL,
    windows_failed    integer NOT NULL,
    anchor_tau        double precision,      -- mean Kendall tau of judged order vs anchor intensity
    anchor_tau_lo     double precision,      -- 95 % CI
    anchor_tau_hi     double precision,
    beta              double precision,
    beta_se           double precision,
    shown_order_share double precision,      -- windows answered exactly in the order shown
    first_position_win double precision,     -- share of windows whose first-shown text ranked first
    verdict           text NOT NULL,         -- ok | warn: ... | fail: ...
    PRIMARY KEY (job_id, value, judge)
);
