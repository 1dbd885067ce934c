"""Text in, token windows out: corpora, tokenizers with an on-disk token cache, Grain loaders."""
