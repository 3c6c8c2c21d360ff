-- Version 6: judge-panel audits run as jobs (kind vidb-audit). An audit snapshots the value's
-- items when it is planned; every judge votes on these items at these intensities, and the votes
-- go to vidb_votes with audit_id = the job id.

CREATE TABLE vidb_audit_items (
    job_id     text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    item_no    integer NOT NULL,               -- 0-based, in vidb_items.id order; block = item_no / items_per_chunk
    item_id    bigint NOT NULL REFERENCES vidb_items(id) ON DELETE CASCADE,
    text_id    bigint NOT NULL REFERENCES texts(id),
    intensity  double precision NOT NULL,      -- the intensity the panel is asked about
    PRIMARY KEY (job_id, item_no),
    UNIQUE (job_id, item_id)
);
