from wsrun.cli.main import script

raise SystemExit(script())
