"""Tasks built on the backbone: classification, evaluation, embeddings."""
