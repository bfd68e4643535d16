"""Training checkpoints on disk: durable save and publication, manifests and their checks, retention,
selection of the latest valid one, safe loading of untrusted pickles, universal (resharding)
conversion and optimizer-state dumps. Knows DeepSpeed's files, not the model."""
