"""`privtext eval`: how useful the synthetic data is, measured on real labelled corpora."""
