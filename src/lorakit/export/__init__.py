"""Turn a trained run into files other tools run: a merged transformers folder, a GGUF file."""
