from sft_tune.cli import main

raise SystemExit(main())
