from facesets.cli import main

raise SystemExit(main())
