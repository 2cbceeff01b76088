"""Reserved for the supernet layer (see DESIGN.md)."""
