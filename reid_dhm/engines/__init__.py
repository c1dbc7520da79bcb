"""Training engines: the DHM re-ID engine on torchreid, the classification engine, helpers."""
