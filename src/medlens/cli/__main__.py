"""``python -m medlens.cli``: the same command line as ``medlens``."""

from medlens.cli import main

if __name__ == "__main__":
    main()
