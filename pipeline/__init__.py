"""graine's orchestration: configuration, run directory and lineage, stages, executors, the CLI,
the model definition and the pretraining loop."""

__version__ = "0.1.0"
