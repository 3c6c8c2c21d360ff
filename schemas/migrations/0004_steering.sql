-- Version 4: steering jobs. One row per planned generation (query × value or combo × level ×
-- regime × sample); the response is a text (deduplicated in `texts`) scored like any job item.
-- The version-1 `generations` table was never written by any code: it is replaced.

DROP TABLE IF EXISTS generations;

CREATE TABLE generations (
    job_id       text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    gen_no       integer NOT NULL,             -- = the job item number its scores use
    chunk_no     integer NOT NULL,
    query_no     integer NOT NULL,             -- row of the queries file (0-based)
    query        text NOT NULL,
    target       text NOT NULL,                -- 'care-harm' or a combo 'care-harm:2,fairness-cheating:-1'
    "values"     text[] NOT NULL,              -- the target values, combo order
    levels       smallint[] NOT NULL,          -- each value's level in -2..2 (0 = unsteered baseline)
    regime       text NOT NULL,                -- persona | exemplars | none (baseline)
    sample       integer NOT NULL,
    seed         bigint NOT NULL,              -- sampling seed of this generation
    messages     jsonb NOT NULL,               -- the prompt exactly as sent
    model        text NOT NULL,
    text_id      bigint REFERENCES texts(id),  -- the response (NULL until generated)
    refusal      boolean,
    refusal_match text,                        -- the phrase that marked it a refusal
    tokens_in    integer,
    tokens_out   integer,
    latency_s    real,
    attempts     smallint,
    cached       boolean,
    worker       text,                         -- host:pid that stored the response
    generated_at timestamptz,
    error        text,                         -- the model failed after its retries
    PRIMARY KEY (job_id, gen_no)
);
CREATE INDEX generations_by_chunk ON generations (job_id, chunk_no);
