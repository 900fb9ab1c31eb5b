"""``python -m vesalius`` runs the command-line tool."""

from vesalius.cli import main

raise SystemExit(main())
