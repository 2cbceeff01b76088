"""Reserved for the strategies layer (see DESIGN.md)."""
