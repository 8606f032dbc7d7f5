-- The state store (wsrun.state.sqlite): entities with their lifecycle state,
-- every change as history (which doubles as the outbox of changes not yet
-- published on the bus), and the registered lifecycles. IF NOT EXISTS: state
-- files made before migrations were recorded already hold these tables.
CREATE TABLE IF NOT EXISTS entities (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    state TEXT NOT NULL,
    substate TEXT,
    attributes TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS entities_kind_state ON entities(kind, state, substate);
CREATE INDEX IF NOT EXISTS entities_updated ON entities(updated);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    from_state TEXT,
    state TEXT NOT NULL,
    from_substate TEXT,
    substate TEXT,
    attributes TEXT NOT NULL,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    published REAL,
    claimed_by TEXT,
    claim_until REAL
);
CREATE INDEX IF NOT EXISTS history_entity ON history(kind, id, seq);
CREATE INDEX IF NOT EXISTS history_pending ON history(seq) WHERE published IS NULL;
CREATE TABLE IF NOT EXISTS lifecycles (
    kind TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    registered REAL NOT NULL
);
