"""The recommender: item tower, LSTM user model, cosine scores, and its training."""
