"""The product archive (NGAS's role): file content by sha256, and a
database of what was ingested."""
