"""Tests of the checkpoints package: layout, saves, resumes, dumps, exports and safe loading."""
