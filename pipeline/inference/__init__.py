"""Running an exported bundle: the bundle format, the classifier, `predict` and `serve`.
Never imports torch, transformers or pandas (a test imports every module here with them blocked)."""
