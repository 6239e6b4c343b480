from chronoserve.cli import main

raise SystemExit(main())
