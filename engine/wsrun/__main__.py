from wsrun.cli.main import main

raise SystemExit(main())
