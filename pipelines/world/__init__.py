"""The world a run starts from: corpus ingest, tokenizer, pi_0 (pretrained, shipped or imported
from GGUF), chunking and the sharded index build. Above core/, cluster/ and actors/."""
