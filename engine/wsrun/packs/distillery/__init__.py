"""The Distillery: TIFF collections to JPEG 2000 masters, recorded in
ArchivesSpace."""
