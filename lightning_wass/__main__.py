"""``python -m lightning_wass``: the same as the ``lightning-wass`` command."""

from lightning_wass.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
