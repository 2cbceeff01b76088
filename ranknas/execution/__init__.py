"""Reserved for the execution layer (see DESIGN.md)."""
