"""Getting labelled text in and out: sources (local, URL, Hub), fetching, archives, readers,
column selection, de-duplication, splitting, the raw and tokenized split formats. Torch-free."""
