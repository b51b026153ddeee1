"""base_to_new_classification package."""
