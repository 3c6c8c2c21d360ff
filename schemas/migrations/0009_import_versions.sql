-- Version 9: every import that adds items now writes a version (the shipped seed is each value's version 1),
-- so a scoring job can record, and its judge learn from, a fixed snapshot of every value. A value
-- that had only seed or imported items before this gets that version 1 here.
WITH first AS (
    INSERT INTO vidb_versions (value, version, kind, job_id, n_items, n_new, n_comparisons, scale, note)
    SELECT value, 1, 'import', NULL, count(*), count(*), 0, 'kept', 'the items imported before imports wrote versions'
    FROM vidb_items i
    WHERE NOT EXISTS (SELECT 1 FROM vidb_versions v WHERE v.value = i.value)
    GROUP BY value
    RETURNING value)
INSERT INTO vidb_version_items (value, version, item_id, text_id, intensity, utility, stderr, flags, source)
SELECT i.value, 1, i.id, i.text_id, i.intensity, i.utility, i.stderr, i.flags, i.source
FROM vidb_items i JOIN first USING (value);
