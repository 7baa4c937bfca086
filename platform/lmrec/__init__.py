"""lmrec: pretrained language encoders turned into recommender systems, trained and served on Ray."""

__version__ = "0.1.0"
