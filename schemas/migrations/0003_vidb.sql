-- Version 3: VIDB lifecycle. Every fit of a value writes one immutable version (a snapshot of all
-- the value's items) in the same transaction that updates the current rows in vidb_items.

CREATE TABLE vidb_versions (
    value          text NOT NULL,
    version        integer NOT NULL,            -- 1, 2, ... per value, in commit order
    kind           text NOT NULL,               -- build | expand | adjudicate
    job_id         text,                        -- the job whose finalize wrote it (NULL: adjudication)
    n_items        integer NOT NULL,
    n_new          integer NOT NULL,            -- items added by this version
    n_comparisons  integer NOT NULL,            -- comparisons the fit used
    scale          text NOT NULL,               -- isotonic | minmax | kept (adjudication)
    note           text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (value, version),
    UNIQUE (job_id, value)
);

CREATE TABLE vidb_version_items (
    value      text NOT NULL,
    version    integer NOT NULL,
    item_id    bigint NOT NULL,                 -- vidb_items.id
    text_id    bigint NOT NULL REFERENCES texts(id),
    intensity  double precision NOT NULL,
    utility    double precision,
    stderr     double precision,
    flags      text[] NOT NULL DEFAULT '{}',
    source     text NOT NULL,
    PRIMARY KEY (value, version, text_id),
    FOREIGN KEY (value, version) REFERENCES vidb_versions (value, version)
);

-- jobs whose comparisons count in a value's fits (build/expand jobs, scoring jobs folded in)
CREATE TABLE vidb_sources (
    value   text NOT NULL,
    job_id  text NOT NULL,
    PRIMARY KEY (value, job_id)
);

-- reference items a build job calibrates against (from --reference or the VIDB at planning time)
CREATE TABLE vidb_job_refs (
    job_id     text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    text_id    bigint NOT NULL REFERENCES texts(id),
    intensity  double precision NOT NULL,
    source     text NOT NULL,
    PRIMARY KEY (job_id, text_id)
);

-- judge-panel votes: is the item's intensity plausible?
CREATE TABLE vidb_votes (
    item_id    bigint NOT NULL REFERENCES vidb_items(id) ON DELETE CASCADE,
    judge      text NOT NULL,
    audit_id   text NOT NULL,
    intensity  double precision NOT NULL,      -- the intensity the judge was asked about
    plausible  boolean NOT NULL,
    reason     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (item_id, judge, audit_id)
);

-- human ratings merged by `vidb adjudicate`
CREATE TABLE vidb_adjudications (
    id          bigserial PRIMARY KEY,
    item_id     bigint NOT NULL REFERENCES vidb_items(id) ON DELETE CASCADE,
    rater       text NOT NULL,
    rating      double precision NOT NULL CHECK (rating BETWEEN -10 AND 10),
    model       double precision NOT NULL,     -- model intensity at the time
    merged      double precision NOT NULL,     -- s* = (1 - λ)·model + λ·mean(human)
    weight      double precision NOT NULL,     -- λ
    file        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
