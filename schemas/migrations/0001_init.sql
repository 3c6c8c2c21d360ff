-- ValueFlow store, version 1. Every table is written idempotently: natural unique keys and
-- ON CONFLICT DO NOTHING mean a redelivered task can never store a row twice.

CREATE TABLE texts (
    id      bigserial PRIMARY KEY,
    sha256  bytea NOT NULL UNIQUE,           -- of the UTF-8 body: texts are deduplicated by content
    body    text  NOT NULL
);

CREATE TABLE vidb_items (
    id          bigserial PRIMARY KEY,
    value       text NOT NULL,               -- steerable value key (care-harm, benevolence, ...)
    text_id     bigint NOT NULL REFERENCES texts(id),
    intensity   double precision NOT NULL CHECK (intensity BETWEEN -10 AND 10),
    utility     double precision,            -- Plackett-Luce utility of the latest fit
    stderr      double precision,
    fit_version integer NOT NULL DEFAULT 0,
    source      text NOT NULL,               -- seed, import:<file>, fit:<job>, human
    flags       text[] NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (value, text_id)
);

CREATE TABLE jobs (
    id           text PRIMARY KEY,
    kind         text NOT NULL,              -- score, vidb-build, steer, ...
    spec         jsonb NOT NULL,
    state        text NOT NULL,              -- running, done, cancelled, failed
    n_items      integer NOT NULL DEFAULT 0,
    n_windows    integer NOT NULL DEFAULT 0,
    n_chunks     integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

CREATE TABLE job_items (
    job_id   text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    item_no  integer NOT NULL,               -- row number in the input (0-based)
    ext_id   text NOT NULL,                  -- the user's id
    text_id  bigint NOT NULL REFERENCES texts(id),
    PRIMARY KEY (job_id, item_no),
    UNIQUE (job_id, ext_id)
);

CREATE TABLE chunks (
    job_id      text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    chunk_no    integer NOT NULL,
    queue       text NOT NULL,
    state       text NOT NULL DEFAULT 'pending',   -- pending, judged, scored, failed
    deliveries  integer NOT NULL DEFAULT 0,         -- times a worker started it (redeliveries + 1)
    last_worker text,                               -- host:pid of the latest worker that took it
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, chunk_no)
);

CREATE TABLE windows (
    job_id            text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    window_id         integer NOT NULL,
    chunk_no          integer NOT NULL,
    value             text NOT NULL,
    item_no           integer NOT NULL,             -- the scored input row
    members           bigint[] NOT NULL,            -- text ids in the order shown to the judge
    target_pos        smallint NOT NULL,            -- where the scored text sits in members
    anchor_ids        bigint[] NOT NULL,            -- vidb item ids, members order, target skipped
    anchor_intensity  double precision[] NOT NULL,  -- snapshot at planning time, same order
    seed              bigint NOT NULL,
    state             text NOT NULL DEFAULT 'pending',  -- pending, done, failed
    failure           text,
    PRIMARY KEY (job_id, window_id)
);
CREATE INDEX windows_by_chunk ON windows (job_id, chunk_no);

CREATE TABLE judge_cache (
    key         bytea PRIMARY KEY,           -- sha256(judge model, full prompt, sampling, seed)
    judge       text NOT NULL,
    response    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE comparisons (
    id            bigserial PRIMARY KEY,
    job_id        text NOT NULL,
    value         text NOT NULL,
    window_id     integer NOT NULL,
    item_ids      bigint[] NOT NULL,         -- text ids in the order shown
    judge         text NOT NULL,
    ranking       smallint[] NOT NULL,       -- positions into item_ids, most supporting first
    response_key  bytea,                     -- judge_cache row holding the raw answer
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, window_id, judge)
);

CREATE TABLE scores (
    job_id          text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    item_no         integer NOT NULL,
    value           text NOT NULL,
    utility         double precision,
    stderr          double precision,
    intensity       double precision,
    intensity_se    double precision,
    windows_used    smallint NOT NULL,
    windows_failed  smallint NOT NULL,
    judge           text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, item_no, value)
);

CREATE TABLE generations (
    id          bigserial PRIMARY KEY,
    job_id      text NOT NULL,
    value       text NOT NULL,
    target      smallint NOT NULL,           -- steering target intensity level
    method      text NOT NULL,               -- persona, in-context, ...
    query       text NOT NULL,
    model       text NOT NULL,
    text_id     bigint REFERENCES texts(id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, value, target, method, query)
);

CREATE TABLE embeddings (
    model_version  text NOT NULL,
    text_sha256    bytea NOT NULL,
    vector         real[] NOT NULL,
    PRIMARY KEY (model_version, text_sha256)
);
