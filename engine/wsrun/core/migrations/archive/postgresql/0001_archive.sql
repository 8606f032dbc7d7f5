-- The archive's metadata (wsrun.archive_store): ingestions, their products,
-- each product's files (by sha256 in the file store) and provenance links.
CREATE TABLE archive_ingestions (
    id bigserial PRIMARY KEY,
    telescope text NOT NULL,
    ingestion_path text NOT NULL,
    ingested double precision NOT NULL,
    manifest text,
    metadata text
);
CREATE TABLE archive_products (
    locator text PRIMARY KEY,
    seq bigserial NOT NULL,
    ingestion bigint NOT NULL REFERENCES archive_ingestions(id),
    telescope text NOT NULL,
    type text NOT NULL,
    filename text NOT NULL,
    ingestion_path text NOT NULL,
    science integer NOT NULL,
    parent text,
    ingested double precision NOT NULL
);
-- A science product is ingested once from its staging path: a second
-- concurrent ingest of the same manifest cannot commit.
CREATE UNIQUE INDEX archive_products_key ON archive_products (ingestion_path, filename)
    WHERE science = 1;
CREATE INDEX archive_products_ingestion ON archive_products (ingestion);
CREATE INDEX archive_products_parent ON archive_products (parent);
CREATE TABLE archive_files (
    locator text NOT NULL REFERENCES archive_products(locator),
    name text NOT NULL,
    size bigint NOT NULL,
    sha256 text NOT NULL,
    PRIMARY KEY (locator, name)
);
CREATE INDEX archive_files_sha ON archive_files (sha256);
CREATE TABLE archive_provenance (
    product text NOT NULL REFERENCES archive_products(locator),
    input text NOT NULL,
    PRIMARY KEY (product, input)
);
CREATE INDEX archive_provenance_input ON archive_provenance (input);
-- Stored files that may have no product referring to them: recorded before a
-- file is placed in the store (or when a reingest drops it), removed by the
-- sweep once no ingest is in flight.
CREATE TABLE archive_unreferenced (
    sha256 text PRIMARY KEY,
    since double precision NOT NULL
);
