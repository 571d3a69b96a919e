"""What each check's flag means and what to do about it, and the unreadable files of an audit: shared by
the audit (text summary) and its HTML report, below both so neither imports the other."""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from .dataset import Dataset

if TYPE_CHECKING:
    from .checks import CheckResult

# What a flag means and what to do about it, for the ten-second summary (text and HTML).
ADVICE: dict[str, tuple[str, str]] = {
    "unreadable": ("files the loader could not decode", "fix or delete them; they are left out of everything else"),
    "exact_duplicate": ("images with identical pixels", "keep one per group: datacheck dedupe SOURCE --out dedupe.csv"),
    "near_duplicate": ("the same picture re-encoded, resized, shifted or slightly edited",
                       "dedupe, and split with datacheck split so copies never straddle train and test"),
    "dark": ("images much darker than usable", "check exposure; drop or fix them"),
    "light": ("washed-out, overexposed images", "check exposure; drop or fix them"),
    "blurry": ("out of focus or upscaled images", "look at them; drop the unusable ones"),
    "noisy": ("pixel noise instead of picture content", "remove them; find the broken capture or export step"),
    "low_information": ("blank or nearly constant images", "remove them"),
    "odd_size": ("original sizes far from the rest", "check for thumbnails, crops or wrong exports"),
    "odd_aspect_ratio": ("shapes far from the usual aspect ratio", "resizing will distort them; crop or drop them"),
    "grayscale": ("gray images in a color dataset", "fine if intended; otherwise find out where they came from"),
    "outlier": ("images far from all their neighbours", "look at them: wrong content, or rare but valid"),
    "label_issue": ("labels a cross-validated classifier disagrees with",
                    "review them; the suggested label is in findings.csv's detail column"),
    "class_imbalance": ("classes far below their fair share", "collect more, or reweight or resample"),
}


def unreadable_items(ds: Dataset, res: "CheckResult | None" = None) -> list[dict[str, str]]:
    """The unreadable files (``path``, ``reason``): from the check's summary when it lists them,
    else from the dataset's ingestion record."""
    if res is not None:
        for key in ("items", "files", "unreadable"):
            val = res.summary.get(key)
            if isinstance(val, (list, tuple)) and all(isinstance(u, Mapping) and "path" in u for u in val):
                return [{"path": str(u["path"]), "reason": str(u.get("reason", ""))} for u in val]
    return [{"path": str(u["path"]), "reason": str(u.get("reason", ""))} for u in ds.unreadable]
