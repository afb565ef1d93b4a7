"""``python -m segnas`` runs the CLI (also what ``torchrun -m segnas`` uses)."""

from segnas.cli.main import main

raise SystemExit(main())
