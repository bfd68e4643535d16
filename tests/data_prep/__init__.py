"""Tests of the data_prep package: readers, clean, tokenizer, preprocess and sample indexes."""
