"""diffusers-style pipelines: a tokenizer, a generator and a sampler behind one ``__call__``."""
