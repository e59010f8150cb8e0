"""FAISS indexes over embeddings: core.py (EmbeddingIndex) and the modules it is made of (kinds, filters,
tuning, sources, build, changes), with pieces.py (build_in_pieces) on top; see clipkit/retrieval/__init__.py."""
