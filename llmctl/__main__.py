"""`python -m llmctl` runs the CLI."""

from llmctl.cli import main

raise SystemExit(main())
