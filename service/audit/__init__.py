"""`privtext audit`: empirical checks of the privacy claims.

- canaries: secret records inserted into a private corpus (once, or repeated), their verbatim
  and near-verbatim leakage into the synthetic records;
- mia: a membership-inference score of each canary from the synthetic text alone, and its AUC
  (inserted versus held-out canaries) with a confidence interval;
- tokens: the seeded Monte-Carlo estimator of one selection step's privacy loss on crafted
  neighbouring logits (also used by tests/mechanisms/test_privacy_empirical.py);
- histogram: the same estimator on Private Evolution's T DP histograms, on crafted neighbouring
  vote sets;
- run: the whole audit; report: its text and JSON; cli: the subcommand.

Nothing here is imported by the rest of the service; the heavy modules (scipy, torch) are
imported by the submodules that need them, not by this package.
"""
