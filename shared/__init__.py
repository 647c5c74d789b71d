"""Code used by both the device and the server: data, text encoder, evaluation."""
