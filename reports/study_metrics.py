"""The metrics a study reads, as its report names them: metric -> (label, higher is better). One table for
the plots, the sentences and effects.csv's descriptive rows."""
from __future__ import annotations

# metric -> (label, higher is better). C_T (Meehan et al. 2020) is near 0 for a model that neither copies
# nor underfits: below 0 its samples sit closer to the training images than held-out ones do (copying),
# far above 0 it underfits. The verdict reads a fall as toward copying (worse) and a rise as away from
# it; the label says both ends, since a rise far above 0 is underfitting, not quality.
METRICS: dict[str, tuple[str, bool]] = {
    "fid": ("FID", False),
    "kid_mean": ("KID", False),
    "precision": ("precision", True),
    "recall": ("recall", True),
    "density": ("density", True),
    "coverage": ("coverage", True),
    "modes_covered": ("modes covered", True),
    "mode_kl": ("mode KL", False),
    "memorization": ("memorization", False),
    "label_agreement": ("label agreement", True),
    "ct_score": ("C_T score (< 0 copies, >> 0 underfits)", True),
    "dup_source_share": ("samples nearest a duplicated source", False),
    "dup_excess": ("excess share nearest the duplicated sources", False),
    "copy_rate": ("share of samples copying a training image", False),
}
