-- The state store (wsrun.state.postgres): entities with their lifecycle
-- state, every change as history (which doubles as the outbox of changes
-- not yet published on the bus), and the registered lifecycles.
-- Times are seconds since the epoch from the database's clock, so hosts
-- with skewed clocks agree on leases and on "most recently updated".
CREATE TABLE state_entities (
    kind text NOT NULL,
    id text NOT NULL,
    state text NOT NULL,
    substate text,
    attributes text NOT NULL,
    created double precision NOT NULL,
    updated double precision NOT NULL,
    version integer NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX state_entities_kind_state ON state_entities (kind, state, substate);
CREATE INDEX state_entities_updated ON state_entities (updated);
CREATE TABLE state_history (
    seq bigserial PRIMARY KEY,
    kind text NOT NULL,
    id text NOT NULL,
    from_state text,
    state text NOT NULL,
    from_substate text,
    substate text,
    attributes text NOT NULL,
    at double precision NOT NULL,
    actor text NOT NULL,
    published double precision,
    claimed_by text,
    claim_until double precision
);
CREATE INDEX state_history_entity ON state_history (kind, id, seq);
CREATE INDEX state_history_pending ON state_history (seq) WHERE published IS NULL;
CREATE TABLE state_lifecycles (
    kind text PRIMARY KEY,
    definition text NOT NULL,
    registered double precision NOT NULL
);
