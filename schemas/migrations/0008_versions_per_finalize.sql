-- Version 8: a job may write more than one version of a value. `jobs resume --retry-failed` runs a
-- finished build's, expansion's or audit's finalize again once the windows that had failed are
-- judged, and that refit is a new version by the same job. Exactly-once per finalize run comes
-- from the finalize transaction (its writes and the job's move to done commit together), not from
-- this constraint; versions are still looked up by job.
ALTER TABLE vidb_versions DROP CONSTRAINT IF EXISTS vidb_versions_job_id_value_key;
CREATE INDEX IF NOT EXISTS vidb_versions_job ON vidb_versions (job_id, value, version);
