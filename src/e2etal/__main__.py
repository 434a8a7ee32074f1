from e2etal.cli import main

raise SystemExit(main())
