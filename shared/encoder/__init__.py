"""The shared text encoder: offline loading, pooled embeddings, private fine-tuning."""
