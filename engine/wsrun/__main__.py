from wsrun.cli import main

raise SystemExit(main())
