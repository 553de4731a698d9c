"""Compare temporal heads on the order-only demo and the appearance-only set (frozen encoder, feature cache);
prints a markdown table of test/acc. Examples:

    python scripts/compare_heads.py
    python scripts/compare_heads.py --heads meanpool residual_gru --datasets appearance --seeds 0 1 2
"""

from vidlstm.cli.compare_heads import main

if __name__ == "__main__":
    main()
