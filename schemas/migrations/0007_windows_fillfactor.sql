-- Version 7: windows pages are filled to half. Every window is written twice: planned (COPY) and
-- judged (one UPDATE of its state and telemetry, none of them indexed). With room on its page the
-- new row version stays there (a heap-only tuple): no new entries in the two indexes, and the old
-- version is pruned in place. Full pages sent every update elsewhere, with two index insertions
-- per window, and the table ended up twice its size anyway (the dead versions).

ALTER TABLE windows SET (fillfactor = 50);
