"""``python -m montage`` runs the command line."""

from montage.cli import main

if __name__ == "__main__":
    main()
