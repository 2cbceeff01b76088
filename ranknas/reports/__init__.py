"""Reserved for the reports layer (see DESIGN.md)."""
