-- Room in each page of perdure.attempts for its rows' second version.
--
-- An attempt's row is written when the attempt starts and again when it ends. Packed full,
-- a page had no room for the new versions: each went to another page, with a new entry in
-- the primary key and a lock record in the write-ahead log. With a little over half of each
-- page kept free (an end is a few bytes longer than its start), the end is written beside
-- the start, as a heap-only update (no index entry; the old version is pruned in place):
-- write-ahead log per drained job 1,969 -> 1,736 bytes. The table takes about twice the
-- pages (its rows are small), its index half the entries. Only pages filled from now on
-- leave the room.

ALTER TABLE perdure.attempts SET (fillfactor = 45);
