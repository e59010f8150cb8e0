"""Embeddings on disk in clip-retrieval's layout: layout.py (where parts live), reader.py (EmbeddingFolder),
writer.py (write_embeddings, the `clipkit embed` job)."""
