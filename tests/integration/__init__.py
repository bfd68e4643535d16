"""Tests on the local Slurm cluster (marked `slurm`)."""
