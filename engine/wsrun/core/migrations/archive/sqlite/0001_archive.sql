-- The embedded archive's metadata (wsrun.archive_meta, archive.db): ingestions,
-- their products, each product's files (by sha256 in the content directory)
-- and provenance links. IF NOT EXISTS: archives made before migrations were
-- recorded already hold these tables.
CREATE TABLE IF NOT EXISTS ingestions (
    id INTEGER PRIMARY KEY,
    telescope TEXT NOT NULL,
    ingestion_path TEXT NOT NULL,
    ingested REAL NOT NULL,
    manifest TEXT,
    metadata TEXT
);
CREATE TABLE IF NOT EXISTS products (
    locator TEXT PRIMARY KEY,
    ingestion INTEGER NOT NULL REFERENCES ingestions(id),
    telescope TEXT NOT NULL,
    type TEXT NOT NULL,
    filename TEXT NOT NULL,
    ingestion_path TEXT NOT NULL,
    science INTEGER NOT NULL,
    parent TEXT,
    ingested REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    locator TEXT NOT NULL REFERENCES products(locator),
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (locator, name)
);
CREATE TABLE IF NOT EXISTS provenance (
    product TEXT NOT NULL REFERENCES products(locator),
    input TEXT NOT NULL,
    PRIMARY KEY (product, input)
);
CREATE INDEX IF NOT EXISTS products_key ON products(ingestion_path, filename);
-- A science product is ingested once from its staging path.
CREATE UNIQUE INDEX IF NOT EXISTS products_science_key ON products(ingestion_path, filename)
    WHERE science = 1;
CREATE INDEX IF NOT EXISTS files_sha ON files(sha256);
CREATE INDEX IF NOT EXISTS provenance_input ON provenance(input);
