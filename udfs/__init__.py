"""Code that runs inside Spark executors: LLM agents, embeddings, FAISS shards."""
