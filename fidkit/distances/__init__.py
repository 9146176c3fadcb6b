"""Distances between two sets of features: Frechet (FID and kin), KID, Inception Score, and the
sample-size tools (bootstrap intervals, FID-infinity)."""
