"""Unsupervised greedy layer-wise pretraining: RBMs stacked into a deep belief net, or stacked autoencoders."""
