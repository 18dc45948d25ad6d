"""``python -m genaudit``."""

from genaudit.cli import main

if __name__ == "__main__":
    main()
