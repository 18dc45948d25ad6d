"""The analyses on a model: spectral maths, SDR, stretch interventions, compare."""
