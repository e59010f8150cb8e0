"""Retrieval: CLIP embeddings on disk, FAISS indexes over them, zero-shot classes and embedding arithmetic.

    from clipkit.retrieval.index.core import EmbeddingIndex       # also clipkit.EmbeddingIndex
    from clipkit.retrieval.embeddings.writer import write_embeddings
    from clipkit.retrieval.embeddings.reader import EmbeddingFolder

The map, lower layers first (a module imports only modules above it in this list):

    embeddings/layout.py   clip-retrieval's folder layout: part paths, modalities, the finiteness check
    embeddings/reader.py   EmbeddingFolder, read_embeddings: the streaming reader that checks the manifest
    embeddings/writer.py   write_embeddings (`clipkit embed`): resumable, distributed, complete or absent
    index/kinds.py         which FAISS index for which size and memory budget (kind="auto")
    index/filters.py       search restricted to some rows (FAISS ID selectors, widened or exact)
    index/tuning.py        held-out queries and the recall promise of recall_target
    index/sources.py       what an index is built from: arrays, folders, chunk iterators, ids, metadata
    index/build.py         train, fill and tune: the steps build() and build_in_pieces() share
    index/changes.py       the steps of add / remove / merge, on the FAISS index, ids and metadata
    index/core.py          EmbeddingIndex: build, search, lookup, add, remove, merge, save, load
    index/pieces.py        build_in_pieces: one trained index filled as pieces, merged (in memory or on disk)
    zeroshot.py            ZeroShotClassifier: class vectors from prompt templates, open_clip's recipe
    arithmetic.py          evaluate_expression, nearest_words: a safe expression language over embeddings

The package modules import nothing lazily from each other, and no package
`__init__` imports anything, so importing one module loads only what it needs.
"""
