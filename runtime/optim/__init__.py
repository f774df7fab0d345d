"""The optimizer shell (``base``) and the per-block rules of each optimizer."""
