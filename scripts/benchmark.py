"""Speed measured in one run, printed as rates and ratios: `python scripts/benchmark.py data --help`."""

from vidlstm.cli.benchmark import main

if __name__ == "__main__":
    main()
