"""isoprobe: [CLS] anisotropy, [CLS] normalization during fine-tuning, and probing of BERT-family encoders."""

__version__ = "0.1.0"
