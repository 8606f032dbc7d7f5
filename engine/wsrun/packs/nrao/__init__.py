"""NRAO's tools: deliver, conveyor and ingest_envoy."""
