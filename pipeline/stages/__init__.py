"""One module per DVC stage, named as the stage, its command and its params.yaml section; each
a plain `run_<stage>()` that the CLI wraps and tests call directly."""
