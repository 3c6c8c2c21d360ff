-- Version 5: the stability study (rating versus ranking). A study job has one job item per
-- (labelled text, run); study_items says which text, run and reference each item is.

CREATE TABLE study_items (
    job_id      text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    item_no     integer NOT NULL,            -- job_items.item_no = run_no * texts + text_no
    text_no     integer NOT NULL,            -- the labelled text (0-based, in file order per value)
    run_no      integer NOT NULL,            -- repeat * paraphrases + paraphrase
    repeat      smallint NOT NULL,
    paraphrase  smallint NOT NULL,
    run_seed    bigint NOT NULL,             -- anchors, layout and the rating's sampling seed
    value       text NOT NULL,
    reference   double precision NOT NULL,   -- the labelled intensity
    PRIMARY KEY (job_id, item_no)
);

-- direct ratings: one per item (the ranking scores of the same items go to `scores`)
CREATE TABLE study_ratings (
    job_id      text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    item_no     integer NOT NULL,
    intensity   double precision,            -- NULL: the answer could not be read (see failure)
    raw         text NOT NULL DEFAULT '',
    failure     text,
    latency_s   real,
    tokens_in   integer,
    tokens_out  integer,
    attempts    smallint,
    cached      boolean,
    PRIMARY KEY (job_id, item_no)
);

-- the figures, written once by finalize
CREATE TABLE study_reports (
    job_id      text PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    report      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
