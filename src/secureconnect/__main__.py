from secureconnect.cli import main

raise SystemExit(main())
