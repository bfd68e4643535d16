"""Training: the BLOOM model and its presets, the DeepSpeed engine, the training loop, its schedules,
data loader and metrics, and the pretrain and export stages."""
