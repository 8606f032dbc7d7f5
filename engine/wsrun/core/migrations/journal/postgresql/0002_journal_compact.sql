-- A compact run journal: a step's effects and large outputs go into
-- journal_blobs as zstd-compressed JSON (effects: one JSON object a line),
-- stored once per distinct content, so a dry run and the real run, or a re-run
-- whose outputs did not change, share one copy. The step row keeps a summary:
-- how many effects, and the blobs' hashes. journal_meta holds small facts such
-- as when retention last pruned.
ALTER TABLE journal_steps ADD COLUMN effect_count bigint;
ALTER TABLE journal_steps ADD COLUMN effects_ref text;
ALTER TABLE journal_steps ADD COLUMN outputs_ref text;
CREATE INDEX journal_steps_effects_ref ON journal_steps (effects_ref);
CREATE INDEX journal_steps_outputs_ref ON journal_steps (outputs_ref);
CREATE TABLE journal_blobs (
    hash text PRIMARY KEY,
    data bytea NOT NULL
);
-- already compressed: TOAST need not try again
ALTER TABLE journal_blobs ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE journal_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
