"""Fused compute for the model: ALiBi attention, LayerNorm, bias-GeLU and chunked cross-entropy, each
with a PyTorch reference, and the dispatch that picks apex, Triton or PyTorch. Imports no graine code."""
