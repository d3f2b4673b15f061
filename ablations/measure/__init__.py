"""Measuring one trained run: caption metrics (scoring.py, entry point ``score``), image-swap and degeneracy
probes (probes.py), slot accuracy on shapes (slots.py) and attention (attention.py)."""
