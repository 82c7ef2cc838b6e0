"""labs_lib.retrieval: the retrieval half of a RAG pipeline, measured (lab 08, the RAG latency budget).

Retrieval is a domain of its own, kept together here:

- metrics    recall@k with the distance-tie rule, per-query recall (worst 1 %), MRR@k, nDCG@k,
             hit rate@k (does the answer reach the prompt)
- corpus     the Python docs that ship with Python (`pydoc_data.topics`) chunked by a stated
             rule, and queries with known answers (a sentence held out of the indexed text)
- synthetic  clustered vectors (seeded, float32) and exact ground truth (faiss flat, batched)
- embed      sentence embeddings (packaged all-MiniLM-L6-v2): throughput vs batch and dtype,
             batch-1 query latency, token lengths
- index      faiss HNSW / IVF and exact search (faiss flat; torch matmul + top-k on a GPU): build
             time, QPS, latency percentiles, recall, memory per vector vs formula, sweeps
- rerank     cross-encoder cost vs candidates (random head offline: cost only), exact re-scoring
- budget     per-query stage times added into p50/p99 totals, the dominant stage, the knee in k,
             the RAG prompt

Heavy imports (faiss, torch) happen inside the modules that need them, not here.
"""
