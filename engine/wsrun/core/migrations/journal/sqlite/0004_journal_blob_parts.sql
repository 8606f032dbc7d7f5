-- Long effects and outputs are stored as chunks of items (wsrun/core/journal_blobs.py),
-- each chunk once however many blobs hold it; a blob made of chunks lists them here,
-- so a prune's sweep keeps every chunk a remaining blob needs.
CREATE TABLE blob_parts (
    blob TEXT NOT NULL,
    part TEXT NOT NULL,
    PRIMARY KEY (blob, part)
);
CREATE INDEX blob_parts_part ON blob_parts (part);
