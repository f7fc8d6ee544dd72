"""Large Concept Models: data preparation, networks, training and generation over concept vectors.

Sentence codecs live in :mod:`encoders`, noise schedules and samplers in :mod:`diffusion`.
"""
