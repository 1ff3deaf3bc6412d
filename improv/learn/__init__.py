"""Layer 2: training and evaluation: corpus, model, training, export, figures.

Imports core, torch and music21 (never on the live path).
"""
