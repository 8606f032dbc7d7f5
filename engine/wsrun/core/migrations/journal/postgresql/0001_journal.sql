-- The run journal (wsrun.journal): each run and each of its steps, with the
-- planned and performed effects and outputs as JSON text.
CREATE TABLE journal_runs (
    id text PRIMARY KEY,
    recipe text NOT NULL,
    recipe_path text NOT NULL,
    inputs text NOT NULL,
    settings text NOT NULL,
    dry_run integer NOT NULL,
    status text NOT NULL,
    started double precision NOT NULL,
    ended double precision,
    pid integer,
    host text,
    workdir text,
    outputs text,
    error text
);
CREATE INDEX journal_runs_started ON journal_runs (started);
CREATE TABLE journal_steps (
    run_id text NOT NULL REFERENCES journal_runs(id),
    key text NOT NULL,
    seq integer NOT NULL,
    uses text NOT NULL,
    status text NOT NULL,
    started double precision NOT NULL,
    ended double precision,
    effects text,
    outputs text,
    error text,
    PRIMARY KEY (run_id, key)
);
