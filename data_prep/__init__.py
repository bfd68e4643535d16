"""The data stages and their parts: readers, normalisation, language id, quality checks, PII redaction,
dedup (`clean`), SentencePiece training and its Hugging Face twin (`tokenizer`), token shards in the
Megatron mmap format with blend weights (`preprocess`), and the blended sample index training reads."""
