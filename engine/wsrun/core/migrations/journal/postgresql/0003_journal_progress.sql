-- A running step's newest progress (files and bytes done against the plan's
-- totals, rates, ETA) as JSON, updated in place at most once a second a run,
-- so the web run page and `wsrun runs show` show it live.
ALTER TABLE journal_steps ADD COLUMN progress text;
