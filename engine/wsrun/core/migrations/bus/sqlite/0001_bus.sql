-- The embedded message bus (wsrun.bus.sqlite): queues with their selector
-- patterns and the messages routed to them. IF NOT EXISTS: bus files made
-- before migrations were recorded already hold these tables.
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    patterns TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    origin TEXT NOT NULL,
    selector TEXT NOT NULL,
    body TEXT NOT NULL,
    queue TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created REAL NOT NULL,
    available REAL NOT NULL,
    consumer TEXT,
    lease_until REAL,
    reply_to TEXT,
    correlation_id TEXT,
    headers TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_queue ON messages(queue, status, available);
CREATE INDEX IF NOT EXISTS messages_by_origin ON messages(origin);
