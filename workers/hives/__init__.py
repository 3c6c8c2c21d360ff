"""HiVES: hierarchical value embedding space (encoder, losses, data, training, evaluation)."""
