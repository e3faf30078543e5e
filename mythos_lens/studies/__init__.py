"""The flagship studies behind `mythos-lens study` (LoRA differentiation, depth)."""
