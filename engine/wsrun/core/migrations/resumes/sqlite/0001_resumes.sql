-- Recorded digests (wsrun.core.resumes): a file's digest kept with its device, inode,
-- size, mtime and ctime, so a re-run or resume reuses it for an unchanged file instead of
-- reading it again; and the multipart uploads in flight, so a killed s3-upload continues.
CREATE TABLE IF NOT EXISTS hashes (
  path TEXT NOT NULL, algorithm TEXT NOT NULL,
  dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
  mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, digest TEXT NOT NULL,
  recorded REAL NOT NULL, PRIMARY KEY (path, algorithm));
CREATE INDEX IF NOT EXISTS hashes_recorded ON hashes(recorded);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE IF NOT EXISTS uploads (
  url TEXT PRIMARY KEY, upload_id TEXT NOT NULL, source TEXT NOT NULL,
  size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, part_size INTEGER NOT NULL,
  sha256 TEXT, pid INTEGER NOT NULL, started REAL NOT NULL);
