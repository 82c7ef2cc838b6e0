"""labs_lib.retrieval: the retrieval half of a RAG pipeline, measured (lab 08, the RAG latency budget).

Retrieval is a domain of its own, kept together here:

- metrics    recall@k with the distance-tie rule, per-query recall (worst 1 %), MRR@k, nDCG@k
- corpus     the Python docs that ship with Python (`pydoc_data.topics`) chunked by a stated
             rule, and queries with known answers (a sentence held out of the indexed text)
- synthetic  clustered vectors (seeded, float32) and exact ground truth (faiss flat, batched)
- index      faiss HNSW / IVF build and search: build time, QPS, latency percentiles, recall,
             memory per vector (measured vs formula), efSearch sweeps

Heavy imports (faiss, torch) happen inside the modules that need them, not here.
"""
