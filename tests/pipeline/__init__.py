"""Tests of the pipeline package: config, CLI, runner, model and training loop."""
