"""File formats the steps read and write: tarballs (writing, codecs, safe
extraction) and the read-through check of a tarball."""
