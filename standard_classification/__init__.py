"""standard_classification package."""
