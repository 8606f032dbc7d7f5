"""The ALMA data-processing workflow (seed 003)."""
