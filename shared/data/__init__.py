"""The in-memory data set, its on-disk formats, loaders and partitioning into devices."""
