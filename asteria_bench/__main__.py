"""``python -m asteria_bench``: the CLI, also under ``torchrun -m asteria_bench``."""

from asteria_bench.cli import main

if __name__ == "__main__":
    main()
