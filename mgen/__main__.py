"""``python -m mgen`` is the same as the ``mgen`` console script."""

from mgen.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
