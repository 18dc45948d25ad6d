"""``python -m genaudit``."""

from genaudit.cli import main

main()
