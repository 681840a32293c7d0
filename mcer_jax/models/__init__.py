"""Flax linen modules of MCER: BERT, sequence encoders, gated transformer, heads."""
