"""Server side of fedrec: aggregation and distribution of item embeddings."""
