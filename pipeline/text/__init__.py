"""Text to token ids: spaCy's rules and hashing, a pretrained model's own subword tokenizer,
the settings both share (text.json) and truncation; the baseline's TF-IDF features. Torch-free."""
