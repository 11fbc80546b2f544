"""`python -m mamba_dna ...` (what `torchrun -m mamba_dna` launches)."""

from mamba_dna.cli import main

if __name__ == "__main__":
    main()
